"""Replication of a primary to a bucket with Object Lock, against the real Ceph RGW of
``scripts/ceph-dev`` (never a mock): uploads, locks, the durable queue across a
``kill -9`` and an unreachable bucket, and ``verify --bucket`` on good and tampered
buckets."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Mount, Rgw, run_cli, wait_sealed
from worm_fs.audit.checkpoint import SigningKey
from worm_fs.errors import EXIT_CHECK_FAILED

MiB = 1 << 20


def replicated(tmp_path: Path, rgw: Rgw, bucket: str, *extra: str,
               endpoint: str | None = None, name: str = "p") -> Mount:
    return Mount(tmp_path / f"{name}-state", tmp_path / f"{name}-mnt", [
        "--settle", "0", "--bucket", f"s3://{bucket}/store", "--s3-endpoint",
        endpoint or rgw.endpoint_url, "--object-retention", "0.01", *extra]).start()


def status(m: Mount) -> dict:
    return json.loads(run_cli("replication", "status", str(m.path), "--json",
                              check=True).stdout)


def wait_uploaded(m: Mount, timeout: float = 60.0) -> dict:
    """Until the queue is empty and the bucket holds the log up to the local size."""
    deadline = time.monotonic() + timeout
    while True:
        s = status(m)
        local = json.loads(run_cli("stats", str(m.path), "--json", check=True).stdout)
        if s["pending_objects"] == 0 and s["log_uploaded_size"] >= local["audit_records"]:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"not uploaded within {timeout} s: {s}")
        time.sleep(0.3)


def pubkey(m: Mount) -> str:
    return os.getxattr(m.path, "user.worm.pubkey").decode()


def verify_bucket(rgw: Rgw, bucket: str, key: str, *extra: str) -> tuple[int, dict]:
    result = run_cli("verify", "--bucket", f"s3://{bucket}/store", "--s3-endpoint",
                     rgw.endpoint_url, "--pubkey", key, "--json", *extra)
    return result.returncode, json.loads(result.stdout or "{}")


def test_sealed_files_and_the_log_reach_the_bucket_locked(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    m = replicated(tmp_path, rgw, bucket)
    try:
        big = os.urandom(3 * MiB + 5)
        (m.path / "model.bin").write_bytes(big)
        (m.path / "runs").mkdir()
        for n in range(5):
            (m.path / "runs" / f"step{n}.json").write_bytes(b'{"loss": %d}' % n)
        wait_sealed(m.path / "model.bin")
        s = wait_uploaded(m)
        assert s["uploaded_objects"] > 0 and s["last_error"] == ""
        prom = run_cli("stats", str(m.path), "--prometheus", check=True).stdout
        assert f'worm_fs_replication_pending_objects{{bucket="s3://{bucket}/store/"' in prom
        assert "worm_fs_replication_failing{" in prom
        key = pubkey(m)
    finally:
        m.stop()
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 0, report
    assert report["files"] == 6 and report["chunks"] >= 4 + 5
    client = rgw.client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="store/")
             ["Contents"]]
    chunk = next(n for n in names if n.startswith("store/chunks/"))
    assert any(n.startswith("store/files/") for n in names)
    assert "store/checkpoint" in names and any(n.startswith("store/tile/0/") for n in names)
    head = client.head_object(Bucket=bucket, Key=chunk)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    # The daemon's own credentials cannot delete a version or shorten its retention.
    with pytest.raises(ClientError) as exc:
        client.delete_object(Bucket=bucket, Key=chunk, VersionId=head["VersionId"])
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        client.put_object_retention(
            Bucket=bucket, Key=chunk, VersionId=head["VersionId"],
            Retention={"Mode": "COMPLIANCE",
                       "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)})


def test_a_tampered_object_fails_verify_naming_it(tmp_path: Path, rgw: Rgw, bucket: str) -> None:
    m = replicated(tmp_path, rgw, bucket)
    try:
        (m.path / "weights.bin").write_bytes(os.urandom(2 * MiB))
        wait_sealed(m.path / "weights.bin")
        wait_uploaded(m)
        key = pubkey(m)
    finally:
        m.stop()
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 0, report
    client = rgw.client()
    chunk = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/chunks/")["Contents"])
    # S3 cannot refuse a new version of a key: the check must catch it.
    client.put_object(Bucket=bucket, Key=chunk, Body=b"not the chunk")
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 1
    assert [f["object"] for f in report["findings"]] == [chunk.removeprefix("store/")]
    assert report["findings"][0]["good_version"]  # the locked original beneath it
    # A layout object whose chunk SHA-256 list was rewritten (keys and size intact, so
    # its layout digest still holds) fails against the file's chunk_hashes record.
    layout_key = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/files/")["Contents"])
    doc = json.loads(client.get_object(Bucket=bucket, Key=layout_key)["Body"].read())
    doc["chunk_sha256"] = ["00" * 32 for _ in doc["chunk_sha256"]]
    client.put_object(Bucket=bucket, Key=layout_key, Body=json.dumps(doc).encode())
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 1
    assert {f["object"] for f in report["findings"]} == {
        chunk.removeprefix("store/"), layout_key.removeprefix("store/")}, report
    # Against another key, the checkpoint itself is refused.
    other = SigningKey.generate("worm-fs/0000000000000000").verifier_key()
    code, report = verify_bucket(rgw, bucket, other)
    assert code == 1 and [f["object"] for f in report["findings"]] == ["checkpoint"]


def test_an_unreachable_bucket_neither_blocks_writers_nor_loses_the_queue(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    m = replicated(tmp_path, rgw, bucket, endpoint="http://127.0.0.1:9")  # nothing there
    payload = {f"f{n}": os.urandom(300_000) for n in range(6)}
    start = time.monotonic()
    for name, data in payload.items():
        (m.path / name).write_bytes(data)
    wait_sealed(m.path / "f5")
    elapsed = time.monotonic() - start
    s = status(m)
    assert s["pending_objects"] >= 6 + 6 and s["uploaded_objects"] == 0
    assert elapsed < 5, f"writers waited for the bucket: {elapsed:.1f} s"
    time.sleep(1.5)
    s = status(m)
    assert s["lag_seconds"] > 1 and s["last_error"]
    assert "worm_fs_replication_failing{" in run_cli(
        "stats", str(m.path), "--prometheus", check=True).stdout
    os.kill(m.proc.pid, signal.SIGKILL)  # the queue is in the store: nothing is lost
    m.proc.wait()
    m.stop()
    m = Mount(m.state, m.path, ["--settle", "0", "--bucket", f"s3://{bucket}/store",
                                "--s3-endpoint", rgw.endpoint_url,
                                "--object-retention", "0.01"]).start()
    try:
        for name, data in payload.items():
            assert (m.path / name).read_bytes() == data
        assert wait_uploaded(m)["last_error"] == ""  # cleared by the first upload that worked
        key = pubkey(m)
    finally:
        m.stop()
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 0, report
    assert report["files"] == 6


def test_the_log_in_the_bucket_follows_within_seconds_under_load(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    import threading

    from worm_fs.store import Store

    m = replicated(tmp_path, rgw, bucket)
    client = rgw.client()
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and os.path.ismount(m.path):
            (m.path / f"ckpt-{n:05d}.bin").write_bytes(os.urandom(4096))
            n += 1
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    store = Store(m.state, readonly=True)
    first_seen: list[tuple[float, int]] = []  # (time, local log size then)
    lags: list[float] = []
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            now = time.monotonic()
            with store.read() as rt:
                local = rt.get_counter("audit_next_seq")
            first_seen.append((now, local))
            try:
                note = client.get_object(Bucket=bucket, Key="store/checkpoint")["Body"].read()
                in_bucket = int(note.split(b"\n")[1])
            except ClientError:
                in_bucket = 0
            behind = [t for t, size in first_seen if size > in_bucket]
            lags.append(now - behind[0] if behind else 0.0)
            time.sleep(0.25)
    finally:
        stop.set()
        thread.join()
        store.close()
        m.stop()
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"bucket log lag over {len(lags)} samples: median {lags[len(lags) // 2]:.2f} s, "
          f"p99 {p99:.2f} s, max {lags[-1]:.2f} s")
    assert p99 <= 5.0
    # A checkpoint a second went to the bucket, each kept there, but the store kept only
    # the ones --checkpoint-seconds asks for: here none but the one at the unmount.
    published = client.list_objects_v2(Bucket=bucket, Prefix="store/checkpoints/")
    assert len(published.get("Contents", [])) >= 6
    store = Store(m.state, readonly=True)
    try:
        with store.read() as rt:
            assert len(list(rt.iter_checkpoints())) == 1
    finally:
        store.close()


def tree_facts(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: kind, mode, size, SHA-256 xattr, link target, bytes."""
    facts: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            facts[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            facts[rel] = ("dir", oct(st.st_mode & 0o7777))
        else:
            facts[rel] = ("file", oct(st.st_mode & 0o7777), st.st_size,
                          os.getxattr(path, "user.worm.sha256"), path.read_bytes())
    return facts


def test_restore_rebuilds_the_store_from_the_bucket_alone(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    from worm_fs.audit.merkle import leaf_hash, root_hash
    from worm_fs.store import Store

    m = replicated(tmp_path, rgw, bucket, "--settle", "60")  # renames in the window
    try:
        (m.path / "tmp-checkpoint-10").mkdir()
        (m.path / "tmp-checkpoint-10" / "model.safetensors").write_bytes(os.urandom(3 * MiB))
        (m.path / "tmp-checkpoint-10" / "config.json").write_bytes(b'{"layers": 2}')
        os.rename(m.path / "tmp-checkpoint-10", m.path / "checkpoint-10")
        (m.path / "notes é.txt").write_bytes(b"non-ASCII names survive")
        os.chmod(m.path / "notes é.txt", 0o444)
        (m.path / "empty").write_bytes(b"")
        os.symlink("checkpoint-10/model.safetensors", m.path / "latest")
        (m.path / "dup.bin").write_bytes((m.path / "checkpoint-10" / "model.safetensors")
                                         .read_bytes())
        fd = os.open(m.path / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"sealed 0400, then shared")
        os.close(fd)
        wait_sealed(m.path / "private.bin")
        run_cli("share", str(m.path / "private.bin"), "--mode", "0444", check=True)
        assert (m.path / "private.bin").stat().st_mode & 0o777 == 0o444
        wait_sealed(m.path / "dup.bin")
        wait_uploaded(m)
        original = tree_facts(m.path)
        key = pubkey(m)
    finally:
        m.stop()
    key_file = m.state / "audit-signing.key"
    restored = tmp_path / "restored-state"
    result = run_cli("restore", f"s3://{bucket}/store", str(restored), "--s3-endpoint",
                     rgw.endpoint_url, "--pubkey", key, "--signing-key", str(key_file),
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["files"] == 6 and report["left_out"] == []
    size = report["tree_size"]
    stores = [Store(m.state, readonly=True), Store(restored, readonly=True)]
    roots = []
    for store in stores:
        with store.read() as rt:
            roots.append(root_hash([leaf_hash(raw) for seq, raw in rt.iter_records()
                                    if seq < size]))
        store.close()
    assert roots[0] == roots[1]  # the same audit log, record for record
    r = Mount(restored, tmp_path / "restored-mnt", ["--settle", "0"]).start()
    try:
        assert tree_facts(r.path) == original
        assert os.getxattr(r.path, "user.worm.pubkey").decode() == key  # the same key
        assert run_cli("verify", str(r.path)).returncode == 0
        assert run_cli("log", "verify", str(r.path)).returncode == 0
    finally:
        r.stop()
    # S3 cannot refuse a new version of a key, nor a delete marker over it: a chunk
    # replaced by a new version and a layout object hidden by a delete marker are read
    # from their locked originals, which the log pins by digest, and each is reported.
    client = rgw.client()
    chunk = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/chunks/")["Contents"])
    client.put_object(Bucket=bucket, Key=chunk, Body=b"not the bytes of its key")
    hidden = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/files/")["Contents"])
    client.delete_object(Bucket=bucket, Key=hidden)  # no version id: a delete marker
    replaced = {chunk.removeprefix("store/"), hidden.removeprefix("store/")}
    code, checked = verify_bucket(rgw, bucket, key)
    assert code == 1 and {f["object"] for f in checked["findings"]} == replaced, checked
    assert all(f["good_version"] for f in checked["findings"]), checked
    again = tmp_path / "again"
    result = run_cli("restore", f"s3://{bucket}/store", str(again), "--s3-endpoint",
                     rgw.endpoint_url, "--pubkey", key, "--json")
    assert result.returncode == 0, result.stderr
    assert {item["object"] for item in json.loads(result.stdout)["replaced"]} == replaced
    assert all(f"replaced object {name}" in result.stderr for name in replaced)
    r = Mount(again, tmp_path / "again-mnt", ["--settle", "0"]).start()
    try:
        assert tree_facts(r.path) == original  # not one byte of the replacement
    finally:
        r.stop()


def test_restore_refuses_an_object_no_version_of_which_passes(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    m = replicated(tmp_path, rgw, bucket, "--object-retention", "0")  # unlocked objects
    try:
        (m.path / "model.bin").write_bytes(os.urandom(2 * MiB))
        wait_sealed(m.path / "model.bin")
        wait_uploaded(m)
        key = pubkey(m)
    finally:
        m.stop()
    client = rgw.client()
    # One tampered chunk whose original is gone (found as it is fetched, after the
    # layouts were checked): the restore is refused, naming it, and leaves nothing.
    chunk = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/chunks/")["Contents"])
    for v in client.list_object_versions(Bucket=bucket, Prefix=chunk)["Versions"]:
        client.delete_object(Bucket=bucket, Key=chunk, VersionId=v["VersionId"])
    client.put_object(Bucket=bucket, Key=chunk, Body=b"not the bytes of its key")
    code, checked = verify_bucket(rgw, bucket, key)
    found = {f["object"]: f for f in checked["findings"]
             if "not under Object Lock" not in f["detail"]}  # unlocked, as mounted
    assert code == 1 and list(found) == [chunk.removeprefix("store/")], checked
    assert found[chunk.removeprefix("store/")]["good_version"] is None
    again = tmp_path / "again"
    result = run_cli("restore", f"s3://{bucket}/store", str(again), "--s3-endpoint",
                     rgw.endpoint_url, "--pubkey", key)
    assert result.returncode == EXIT_CHECK_FAILED, result.stderr
    assert chunk.removeprefix("store/") in result.stderr
    assert not again.exists() and not (tmp_path / "again.restoring").exists()
    # One tampered layout, its original gone too: refused before any chunk is fetched.
    target = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/files/")["Contents"])
    for v in client.list_object_versions(Bucket=bucket, Prefix=target)["Versions"]:
        client.delete_object(Bucket=bucket, Key=target, VersionId=v["VersionId"])
    client.put_object(Bucket=bucket, Key=target, Body=b'{"chunks": [], "size": 1}')
    result = run_cli("restore", f"s3://{bucket}/store", str(again), "--s3-endpoint",
                     rgw.endpoint_url, "--pubkey", key)
    assert result.returncode == EXIT_CHECK_FAILED
    assert target.removeprefix("store/") in result.stderr
    assert not again.exists()


def test_writers_keep_their_pace_while_the_bucket_is_down(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """RGW stopped while 4 writers write: their throughput does not drop (the issue asks
    for at most 10% against the bucket up), the lag grows, and all is uploaded after
    RGW is back. The outage lasts WORM_FS_RGW_OUTAGE seconds (default 5, to keep the
    default run short; 30 in the issue's wording)."""
    import threading

    from tests.conftest import ceph_dev

    outage = float(os.environ.get("WORM_FS_RGW_OUTAGE", "5"))
    m = replicated(tmp_path, rgw, bucket)
    written = [0] * 4
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        data = os.urandom(512 * 1024)
        while not stop.is_set() and os.path.ismount(m.path):
            with open(m.path / f"w{n}-{i:06d}", "wb") as f:
                f.write(data[:-8] + i.to_bytes(8, "big"))  # no two files alike
                os.fsync(f.fileno())
            written[n] += len(data)
            i += 1
            time.sleep(0.1)  # a training job's pace, not a flood: the run stays short

    def rate(seconds: float) -> float:
        before, t0 = sum(written), time.monotonic()
        time.sleep(seconds)
        return (sum(written) - before) / (time.monotonic() - t0)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        up = rate(outage)
        ceph_dev("stop")
        try:
            time.sleep(1)
            down = rate(outage - 1)
            lag = status(m)["lag_seconds"]
        finally:
            ceph_dev("start")
        stop.set()
        for t in threads:
            t.join()
        print(f"4 writers: {up / 1e6:.1f} MB/s with the bucket up, {down / 1e6:.1f} MB/s "
              f"with RGW stopped ({down / up:.2f}x); lag {lag:.1f} s")
        assert down >= 0.9 * up
        assert lag >= outage - 2
        wait_uploaded(m, timeout=120)
        key = pubkey(m)
    finally:
        stop.set()
        for t in threads:
            t.join()
        m.stop()
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 0, report


def test_checkpoints_replaced_while_the_bucket_was_down_leave_no_gap_in_its_log(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """While RGW is down the daemon signs a transient checkpoint a second, each replacing
    the one before, and their uploads queue up behind hundreds of objects: once it is
    back, a round that takes a replaced one must not count the log as uploaded up to it
    (else the entry bundles between would never be put)."""
    from tests.conftest import ceph_dev

    m = replicated(tmp_path, rgw, bucket)
    try:
        (m.path / "before").write_bytes(b"b")
        wait_uploaded(m)
        ceph_dev("stop")
        try:
            deadline = time.monotonic() + 4  # several checkpoints, over 256 records
            n = 0
            while time.monotonic() < deadline or n < 400:
                (m.path / f"f{n:04d}").write_bytes(os.urandom(64))
                n += 1
        finally:
            ceph_dev("start")
        wait_uploaded(m, timeout=120)
        key = pubkey(m)
    finally:
        m.stop()
    code, report = verify_bucket(rgw, bucket, key)
    assert code == 0, report


def write_uploaded(m: Mount, name: str) -> None:
    """Write a small file and wait until it and the log are in the bucket."""
    (m.path / name).write_bytes(name.encode() * 100)
    wait_sealed(m.path / name)
    wait_uploaded(m)


def checkpoint_sizes(m: Mount) -> list[int]:
    store = m.store()
    try:
        with store.read() as rt:
            return [size for size, _ in rt.iter_checkpoints()]
    finally:
        store.close()


def test_an_idle_log_makes_no_new_checkpoints_with_a_bucket(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """The bucket's log follows within a second while records come in, but a log that
    stopped growing keeps its last checkpoint: no new one per second."""
    m = replicated(tmp_path, rgw, bucket)
    try:
        write_uploaded(m, "a.bin")
        before = checkpoint_sizes(m)
        time.sleep(4)
        after = checkpoint_sizes(m)
        records = json.loads(run_cli("stats", str(m.path), "--json", check=True).stdout)[
            "audit_records"]
    finally:
        m.stop()
    assert after == before, (before, after)
    assert max(after) == records  # the newest covers the whole log


def test_verify_bucket_catches_a_forked_log_by_its_checkpoints(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """A store copied and then written on both sides, into the same bucket: each
    checkpoint of the first side (in the bucket, and one kept off it) conflicts with the
    second side's newest one, and verify --bucket names them."""
    m = replicated(tmp_path, rgw, bucket)
    try:
        write_uploaded(m, "base.bin")
        key = pubkey(m)
    finally:
        m.stop()
    shutil.copytree(m.state, tmp_path / "q-state", symlinks=True)
    m.start()
    try:
        write_uploaded(m, "a.bin")
    finally:
        m.stop()
    kept = tmp_path / "kept-checkpoint"
    kept.write_bytes(rgw.client().get_object(Bucket=bucket, Key="store/checkpoint")["Body"]
                     .read())
    code, report = verify_bucket(rgw, bucket, key, "--checkpoint", str(kept))
    assert code == 0, report
    fork = Mount(tmp_path / "q-state", tmp_path / "q-mnt", m.options).start()
    try:
        for n in range(4):  # more records than the first side wrote since the copy
            (fork.path / f"f{n}.bin").write_bytes(b"f" * 100)
        wait_sealed(fork.path / "f3.bin")
        wait_uploaded(fork)
    finally:
        fork.stop()
    code, report = verify_bucket(rgw, bucket, key, "--checkpoint", str(kept))
    assert code == 1
    objects = [f["object"] for f in report["findings"]]
    assert f"checkpoint file {kept}" in objects, objects
    assert any(o.startswith("checkpoints/") for o in objects), objects


def bucket_keys(rgw: Rgw, bucket: str, prefix: str) -> list[str]:
    listing = rgw.client().list_objects_v2(Bucket=bucket, Prefix=f"store/{prefix}")
    return [o["Key"].removeprefix("store/") for o in listing.get("Contents", [])]


def bucket_log_size(rgw: Rgw, bucket: str) -> int:
    note = rgw.client().get_object(Bucket=bucket, Key="store/checkpoint")["Body"].read()
    return int(note.split(b"\n")[1])


def test_replicate_sync_holds_close_until_the_bucket_has_the_file(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """``--replicate sync``: when a writer's close() returns, the bucket already holds
    the file's chunks and a log that covers its flush record; with the bucket away the
    close() waits (a reader's does not) and returns once it is back; ``sync FILE`` on a
    sealed file also waits for its layout object."""
    import subprocess
    import threading

    from tests.harness.relay import PausableRelay

    relay = PausableRelay(rgw.endpoint_url)
    m = replicated(tmp_path, rgw, bucket, "--replicate", "sync", endpoint=relay.url)
    try:
        data = os.urandom(3 * MiB + 5)
        fd = os.open(m.path / "a.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
        # At once, no waiting: four chunks (three full, one tail), and the log.
        assert len(bucket_keys(rgw, bucket, "chunks/")) == 4
        records = [json.loads(line) for line in run_cli(
            "log", "show", str(m.path), "--json", check=True).stdout.splitlines()]
        flush = [r for r in records if r["op"] == "flush" and r.get("size") == len(data)]
        assert flush and bucket_log_size(rgw, bucket) > flush[-1]["seq"]

        relay.pause()
        closed = threading.Event()

        def write_b() -> None:
            with open(m.path / "b.bin", "wb") as f:
                f.write(os.urandom(MiB + 1))
            closed.set()

        writer = threading.Thread(target=write_b)
        writer.start()
        assert not closed.wait(3), "close() returned while the bucket was away"
        assert (m.path / "a.bin").read_bytes() == data  # readers do not wait
        relay.resume()
        assert closed.wait(60)
        writer.join()
        assert len(bucket_keys(rgw, bucket, "chunks/")) == 6

        # No wait for the seal: sync FILE itself waits for it (the release may still be
        # on its way).
        ino = os.stat(m.path / "b.bin").st_ino
        relay.pause()
        os.mkdir(m.path / "later")  # a record the bucket's log cannot have yet
        synced = threading.Event()
        sync = threading.Thread(target=lambda: (subprocess.run(
            ["sync", str(m.path / "b.bin")], check=True), synced.set()))
        sync.start()
        assert not synced.wait(2), "sync FILE returned while the bucket was away"
        relay.resume()
        assert synced.wait(60)
        sync.join()
        assert [k for k in bucket_keys(rgw, bucket, "files/") if k.startswith(f"files/{ino}-")]

        # Unmounting while a close() waits for an away bucket: the close() fails (EIO:
        # not confirmed), the daemon still stops at once, and the bytes stay queued.
        relay.pause()
        errors: list[OSError] = []

        def write_c() -> None:
            try:
                with open(m.path / "c.bin", "wb") as f:
                    f.write(b"c" * 1000)
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=write_c)
        writer.start()
        time.sleep(1)
        assert writer.is_alive()
        start = time.monotonic()
        assert m.stop() == 0
        assert time.monotonic() - start < 15
        writer.join(timeout=10)
        assert [e.errno for e in errors] == [errno.EIO]
        from worm_fs.store import Store

        store = Store(m.state, readonly=True)  # the refusal is in the audit log
        with store.read() as rt:
            log = [json.loads(raw) for _, raw in rt.iter_records()]
        store.close()
        c_ino = next(r["ino"] for r in log if r["op"] == "create" and r["path"] == "/c.bin")
        assert [(r["ino"], r["result"]) for r in log
                if r["op"] == "replicate_unconfirmed"] == [(c_ino, "EIO")]
    finally:
        relay.resume()
        m.stop()
        relay.close()


def test_closes_waiting_for_an_away_bucket_leave_the_mount_serving(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """``--replicate sync`` with the bucket away: more writers wait in close() than a
    mount without a bucket serves requests at once (64), and readers, stat and new
    writers are still answered."""
    import threading

    from tests.harness.relay import PausableRelay
    from worm_fs.fuse_ops import MAX_TASKS

    relay = PausableRelay(rgw.endpoint_url)
    m = replicated(tmp_path, rgw, bucket, "--replicate", "sync", endpoint=relay.url)
    writers: list[threading.Thread] = []
    try:
        (m.path / "before.bin").write_bytes(b"sealed before the outage")
        wait_sealed(m.path / "before.bin")
        relay.pause()
        closed = threading.Semaphore(0)

        def write(n: int) -> None:
            with open(m.path / f"w{n:03d}", "wb") as f:
                f.write(n.to_bytes(4, "big"))
            closed.release()

        writers = [threading.Thread(target=write, args=(n,), daemon=True)
                   for n in range(MAX_TASKS + 16)]
        for t in writers:
            t.start()
        time.sleep(3)  # each writes 4 bytes, then waits in close()
        assert not closed.acquire(timeout=0.1), "a close() returned with the bucket away"
        answered: list[object] = []  # from a thread: without room, these would hang

        def use_the_mount() -> None:
            answered.append((m.path / "before.bin").read_bytes())
            answered.append(os.stat(m.path / "w000").st_size)
            (m.path / "sub").mkdir()
            answered.append("mkdir")

        user = threading.Thread(target=use_the_mount, daemon=True)
        user.start()
        user.join(timeout=10)
        assert answered == [b"sealed before the outage", 4, "mkdir"], \
            "the mount stopped answering while close() calls waited for the bucket"
        relay.resume()
        for t in writers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in writers)
    finally:
        relay.resume()
        m.stop()
        relay.close()


def test_the_bucket_checkpoint_never_names_a_layout_the_bucket_lacks(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """A replica trusts what the bucket's checkpoint covers: every seal record in it must
    find its layout object (and so its chunks) already there, or the replica reports a
    missing object that is only late. Sampled while files are written and sealed."""
    import threading

    from worm_fs.store import Store

    m = replicated(tmp_path, rgw, bucket)
    client = rgw.client()
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and os.path.ismount(m.path) and n < 40:
            (m.path / f"model-{n:03d}.bin").write_bytes(os.urandom(4 * MiB))
            n += 1
            time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    store = Store(m.state, readonly=True)
    checked: set[str] = set()
    seen_sizes: set[int] = set()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                note = client.get_object(Bucket=bucket, Key="store/checkpoint")["Body"].read()
            except ClientError:
                continue
            size = int(note.split(b"\n")[1])
            if size in seen_sizes:
                continue
            seen_sizes.add(size)
            with store.read() as rt:
                seals = [json.loads(raw) for _, raw in rt.iter_records() if _ < size]
            for rec in seals:
                if rec.get("op") != "seal" or rec.get("result") != "ok":
                    continue
                key = f"files/{rec['ino']}-{rec['layout']}.json"
                if key in checked:
                    continue
                try:
                    client.head_object(Bucket=bucket, Key=f"store/{key}")
                except ClientError:
                    raise AssertionError(f"checkpoint of size {size} covers the seal of "
                                         f"{rec['path']}, but {key} is not in the bucket") from None
                checked.add(key)
    finally:
        stop.set()
        thread.join()
        store.close()
        m.stop()
    assert len(checked) >= 5 and len(seen_sizes) >= 3, (len(checked), len(seen_sizes))


def test_a_mount_without_the_bucket_forgets_the_queue_and_the_next_requeues_all(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """What a mount without --bucket stores is not queued; so the store stops naming its
    bucket, and the next mount with one queues everything, that file too. (That the
    forgetting now comes before recovery's writes, for a crash in between, is not
    exercised: no test can stop the daemon there.)"""
    from worm_fs.store import Store, uploads

    nowhere = "http://127.0.0.1:9"
    m = replicated(tmp_path, rgw, bucket, endpoint=nowhere)
    (m.path / "first.bin").write_bytes(os.urandom(1000))
    wait_sealed(m.path / "first.bin")
    m.stop()
    plain = Mount(m.state, m.path, ["--settle", "0"]).start()
    try:
        (plain.path / "unqueued.bin").write_bytes(os.urandom(2000))
        wait_sealed(plain.path / "unqueued.bin")
    finally:
        plain.stop()
    store = Store(m.state, readonly=True)
    with store.read() as rt:
        assert rt.get_meta(uploads.BUCKET_META) is None
    store.close()
    m = replicated(tmp_path, rgw, bucket, endpoint=nowhere)
    try:
        ino = os.stat(m.path / "unqueued.bin").st_ino
        store = Store(m.state, readonly=True)
        with store.read() as rt:
            names = [name for name, _, _ in rt.iter_uploads()]
        store.close()
        assert any(n.startswith(uploads.FILE + f"{ino}/".encode()) for n in names), names
        assert sum(n.startswith(uploads.CHUNK) for n in names) == 2
    finally:
        m.stop()
