"""The Ceph RGW of ``scripts/ceph-dev``, and the S3 Object Lock rules replication needs.

These talk to the real one-node cluster (the ``rgw`` fixture), so they record what RGW
does, not what the S3 documentation says it should: a locked version cannot be deleted
or its lock weakened, a plain DELETE only adds a delete marker, GOVERNANCE yields only to
``BypassGovernanceRetention``, a legal hold to nothing, and ``DeleteObjects`` answers 200
with one error per refused key.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Rgw, ceph_dev

#: Long enough for any test to finish inside it; the dev cluster keeps the objects that
#: long (COMPLIANCE ones cannot go sooner) and their buckets for good.
RETENTION = dt.timedelta(minutes=10)


@pytest.fixture(scope="session")
def s3(rgw: Rgw):
    return rgw.client()


def new_bucket(s3, *, object_lock: bool = True) -> str:
    name = f"worm-fs-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


def empty_and_remove(s3, bucket: str) -> None:
    """Delete what the locks allow; COMPLIANCE versions and their bucket stay behind."""
    try:
        listing = s3.list_object_versions(Bucket=bucket)
        for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
            try:
                s3.put_object_legal_hold(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                         LegalHold={"Status": "OFF"})
            except ClientError:
                pass
            try:
                s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                 BypassGovernanceRetention=True)
            except ClientError:
                pass
        s3.delete_bucket(Bucket=bucket)
    except ClientError:
        pass


@pytest.fixture
def bucket(s3) -> Iterator[str]:
    """A new bucket with Object Lock enabled (and so versioning)."""
    name = new_bucket(s3)
    yield name
    empty_and_remove(s3, name)


def until(delta: dt.timedelta = RETENTION) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + delta


def refused(call, *args, **kwargs) -> dict:
    """Run an S3 call that must be refused; return its error."""
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value.response


def put_locked(s3, bucket: str, key: str, **lock) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), **lock)["VersionId"]


def assert_access_denied(response: dict) -> None:
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert response["Error"]["Code"] == "AccessDenied"


def test_a_bucket_created_with_object_lock_has_it_enabled_and_is_versioned(s3, bucket):
    config = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config["ObjectLockEnabled"] == "Enabled"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    # Versioning cannot be suspended under Object Lock.
    error = refused(s3.put_bucket_versioning, Bucket=bucket,
                    VersioningConfiguration={"Status": "Suspended"})
    assert error["Error"]["Code"] == "InvalidBucketState"


def test_a_bucket_without_object_lock_refuses_locked_objects(s3):
    name = new_bucket(s3, object_lock=False)
    try:
        error = refused(s3.get_object_lock_configuration, Bucket=name)
        assert error["Error"]["Code"] == "ObjectLockConfigurationNotFoundError"
        error = refused(s3.put_object, Bucket=name, Key="k", Body=b"k",
                        ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until())
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error["Error"]["Code"] == "InvalidRequest"
    finally:
        empty_and_remove(s3, name)


def test_compliance_retention_blocks_deleting_the_version_even_with_bypass(s3, bucket):
    version = put_locked(s3, bucket, "c", ObjectLockMode="COMPLIANCE",
                         ObjectLockRetainUntilDate=until())
    assert_access_denied(refused(s3.delete_object, Bucket=bucket, Key="c", VersionId=version))
    assert_access_denied(refused(s3.delete_object, Bucket=bucket, Key="c", VersionId=version,
                                 BypassGovernanceRetention=True))
    body = s3.get_object(Bucket=bucket, Key="c", VersionId=version)["Body"].read()
    assert body == b"c"


def test_compliance_retention_can_be_extended_but_not_shortened_or_weakened(s3, bucket):
    retain = until()
    version = put_locked(s3, bucket, "c", ObjectLockMode="COMPLIANCE",
                         ObjectLockRetainUntilDate=retain)
    shorter = {"Mode": "COMPLIANCE", "RetainUntilDate": retain - dt.timedelta(minutes=5)}
    for bypass in (False, True):
        assert_access_denied(refused(s3.put_object_retention, Bucket=bucket, Key="c",
                                     VersionId=version, Retention=shorter,
                                     BypassGovernanceRetention=bypass))
    governance = {"Mode": "GOVERNANCE", "RetainUntilDate": retain + dt.timedelta(minutes=5)}
    assert_access_denied(refused(s3.put_object_retention, Bucket=bucket, Key="c",
                                 VersionId=version, Retention=governance,
                                 BypassGovernanceRetention=True))
    longer = retain + dt.timedelta(minutes=1)
    s3.put_object_retention(Bucket=bucket, Key="c", VersionId=version,
                            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": longer})
    now = s3.get_object_retention(Bucket=bucket, Key="c", VersionId=version)["Retention"]
    assert now["Mode"] == "COMPLIANCE"
    assert abs(now["RetainUntilDate"] - longer) < dt.timedelta(seconds=1)


def test_a_plain_delete_of_a_locked_object_only_adds_a_delete_marker(s3, bucket):
    version = put_locked(s3, bucket, "c", ObjectLockMode="COMPLIANCE",
                         ObjectLockRetainUntilDate=until())
    marker = s3.delete_object(Bucket=bucket, Key="c")
    assert marker["DeleteMarker"] is True
    assert refused(s3.head_object, Bucket=bucket, Key="c")["Error"]["Code"] == "404"
    # The locked version is still there, by its id; so is an overwritten one.
    assert s3.get_object(Bucket=bucket, Key="c", VersionId=version)["Body"].read() == b"c"
    s3.put_object(Bucket=bucket, Key="c", Body=b"other")
    assert s3.get_object(Bucket=bucket, Key="c", VersionId=version)["Body"].read() == b"c"


def test_governance_retention_yields_only_to_bypass_governance_retention(s3, bucket):
    retain = until()
    version = put_locked(s3, bucket, "g", ObjectLockMode="GOVERNANCE",
                         ObjectLockRetainUntilDate=retain)
    assert_access_denied(refused(s3.delete_object, Bucket=bucket, Key="g", VersionId=version))
    shorter = {"Mode": "GOVERNANCE", "RetainUntilDate": retain - dt.timedelta(minutes=5)}
    assert_access_denied(refused(s3.put_object_retention, Bucket=bucket, Key="g",
                                 VersionId=version, Retention=shorter))
    s3.put_object_retention(Bucket=bucket, Key="g", VersionId=version, Retention=shorter,
                            BypassGovernanceRetention=True)
    s3.delete_object(Bucket=bucket, Key="g", VersionId=version, BypassGovernanceRetention=True)
    assert refused(s3.head_object, Bucket=bucket, Key="g",
                   VersionId=version)["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_a_legal_hold_blocks_deletion_even_with_bypass_until_it_is_lifted(s3, bucket):
    version = put_locked(s3, bucket, "h", ObjectLockLegalHoldStatus="ON")
    hold = s3.get_object_legal_hold(Bucket=bucket, Key="h", VersionId=version)
    assert hold["LegalHold"]["Status"] == "ON"
    for bypass in (False, True):
        assert_access_denied(refused(s3.delete_object, Bucket=bucket, Key="h",
                                     VersionId=version, BypassGovernanceRetention=bypass))
    s3.put_object_legal_hold(Bucket=bucket, Key="h", VersionId=version,
                             LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=bucket, Key="h", VersionId=version)


def test_the_bucket_default_retention_locks_objects_put_without_lock_headers(s3, bucket):
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
    })
    version = s3.put_object(Bucket=bucket, Key="d", Body=b"d")["VersionId"]
    retention = s3.get_object_retention(Bucket=bucket, Key="d", VersionId=version)["Retention"]
    assert retention["Mode"] == "GOVERNANCE"
    assert retention["RetainUntilDate"] > until(dt.timedelta(hours=23))
    assert_access_denied(refused(s3.delete_object, Bucket=bucket, Key="d", VersionId=version))


def test_delete_objects_answers_200_with_an_access_denied_error_per_locked_key(s3, bucket):
    versions = {
        "compliance": put_locked(s3, bucket, "compliance", ObjectLockMode="COMPLIANCE",
                                 ObjectLockRetainUntilDate=until()),
        "governance": put_locked(s3, bucket, "governance", ObjectLockMode="GOVERNANCE",
                                 ObjectLockRetainUntilDate=until()),
        "hold": put_locked(s3, bucket, "hold", ObjectLockLegalHoldStatus="ON"),
        "free": put_locked(s3, bucket, "free"),
    }
    objects = [{"Key": k, "VersionId": v} for k, v in versions.items()]
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert [(d["Key"], d["VersionId"]) for d in answer["Deleted"]] == [("free", versions["free"])]
    errors = {e["Key"]: e for e in answer["Errors"]}
    assert set(errors) == {"compliance", "governance", "hold"}
    for key, error in errors.items():
        assert (error["VersionId"], error["Code"]) == (versions[key], "AccessDenied")

    # With the bypass only the GOVERNANCE version goes.
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[:3]},
                               BypassGovernanceRetention=True)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert [d["Key"] for d in answer["Deleted"]] == ["governance"]
    assert sorted(e["Key"] for e in answer["Errors"]) == ["compliance", "hold"]


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP and UDP sockets PID listens on or has bound."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            listening = state == "0A" if table.startswith("tcp") else state == "07"
            if inode in inodes and listening:
                found.append(f"{table} {decode_address(local)}")
    return found


def decode_address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{'.'.join(str(b) for b in reversed(raw))}:{int(port, 16)}"
    words = [raw[i:i + 4][::-1].hex() for i in range(0, 16, 4)]
    return f"[{':'.join(words)}]:{int(port, 16)}"


def test_the_daemons_listen_on_loopback_only(rgw: Rgw):
    pids = {name: int((rgw.cluster_dir / "run" / f"{name}.pid").read_text())
            for name in ("mon.a", "osd.0", "client.rgw.a")}
    seen = {name: listening_addresses(pid) for name, pid in pids.items()}
    assert all(seen.values()), seen
    outside = [a for addresses in seen.values() for a in addresses
               if not a.split()[1].startswith("127.0.0.1:")]
    assert outside == [], seen
    port = rgw.endpoint_url.rsplit(":", 1)[1]
    assert f"tcp 127.0.0.1:{port}" in seen["client.rgw.a"]


def test_objects_survive_a_restart_of_the_cluster(rgw: Rgw, s3, bucket):
    version = put_locked(s3, bucket, "kept", ObjectLockMode="GOVERNANCE",
                         ObjectLockRetainUntilDate=until())
    ceph_dev("stop")
    ceph_dev("start")
    got = rgw.client().get_object(Bucket=bucket, Key="kept", VersionId=version)
    assert got["Body"].read() == b"kept"
    assert got["ObjectLockMode"] == "GOVERNANCE"
