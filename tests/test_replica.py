"""Read-only replicas: a second daemon mounts a primary's store from its bucket alone,
against the real Ceph RGW of ``scripts/ceph-dev``. Primary and replica are two daemons
with separate state directories on this machine."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount, Rgw, ceph_dev, run_cli, wait_for, wait_sealed
from tests.test_replication import (
    pubkey,
    replicated,
    tree_facts,
    wait_uploaded,
)

MiB = 1 << 20


def replica(tmp_path: Path, rgw: Rgw, bucket: str, key: str, *extra: str,
            name: str = "r", endpoint: str | None = None) -> Mount:
    return Mount(tmp_path / f"{name}-state", tmp_path / f"{name}-mnt", [
        "--replica", f"s3://{bucket}/store", "--s3-endpoint", endpoint or rgw.endpoint_url,
        "--pubkey", key, "--poll", "1", "--object-retention", "0.01", *extra]).start()


def replica_status(r: Mount) -> tuple[int, dict]:
    result = run_cli("replication", "status", str(r.path), "--json")
    return result.returncode, json.loads(result.stdout or "{}")


def wait_refused(r: Mount, timeout: float = 30.0) -> dict:
    return wait_for(lambda: (s := replica_status(r))[0] == 1 and s[1]["refused"] and s[1],
                    timeout)


def records(m: Mount) -> list[dict]:
    out = run_cli("log", "show", str(m.path), "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_replica_serves_the_primarys_tree_byte_for_byte_and_changes_nothing(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    p = replicated(tmp_path, rgw, bucket, "--settle", "60")  # renames in the window
    try:
        ckpt = p.path / "tmp-checkpoint-10"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(os.urandom(5 * MiB + 17))
        (ckpt / "config.json").write_bytes(b'{"layers": 2}')
        os.rename(ckpt, p.path / "checkpoint-10")  # as the Trainer saves
        (p.path / "notes é.txt").write_bytes(b"non-ASCII names survive")
        os.chmod(p.path / "notes é.txt", 0o444)
        os.symlink("checkpoint-10/model.safetensors", p.path / "latest")
        (p.path / "empty").write_bytes(b"")
        for name in ("checkpoint-10/model.safetensors", "notes é.txt", "empty"):
            wait_sealed(p.path / name)
        manifest = tmp_path / "tree.manifest"
        run_cli("manifest", "create", str(p.path), "-o", str(manifest), check=True)
        wait_uploaded(p)
        original = tree_facts(p.path)
        key = pubkey(p)
        r = replica(tmp_path, rgw, bucket, key)
        try:
            wait_for(lambda: (r.path / "notes é.txt").exists() and
                     (r.path / "empty").exists())
            assert tree_facts(r.path) == original
            for name in ("checkpoint-10/model.safetensors", "empty"):
                facts = [json.loads(run_cli("stat", str(m.path / name), "--json",
                                            check=True).stdout) for m in (p, r)]
                for field in ("state", "sha256", "size", "mode"):
                    assert facts[0].get(field) == facts[1].get(field), (field, facts)
            result = run_cli("manifest", "verify", str(manifest), str(r.path), "--pubkey", key)
            assert result.returncode == 0, result.stdout + result.stderr
            # Nothing through the replica changes anything: EROFS, and audited there.
            attempts = [
                lambda: open(r.path / "checkpoint-10" / "config.json", "ab"),
                lambda: open(r.path / "new.bin", "wb"),
                lambda: os.mkdir(r.path / "newdir"),
                lambda: os.rename(r.path / "checkpoint-10", r.path / "moved"),
                lambda: os.unlink(r.path / "empty"),
                lambda: os.chmod(r.path / "empty", 0o400),
                lambda: os.setxattr(r.path / "empty", "user.tag", b"x"),
                lambda: os.symlink("empty", r.path / "link2"),
            ]
            for attempt in attempts:
                with pytest.raises(OSError) as exc:
                    attempt()
                assert exc.value.errno == errno.EROFS, attempt
            refused = [rec for rec in records(r) if rec["result"] == "EROFS"]
            assert {rec["op"] for rec in refused} >= {"open", "create", "mkdir", "rename",
                                                      "unlink", "setattr", "symlink"}
            assert any(rec["op"] == "replica_follow" for rec in records(r))
            assert run_cli("log", "verify", str(r.path)).returncode == 0
            scrub = json.loads(run_cli("verify", str(r.path), "--json").stdout)
            assert scrub["ok"] and scrub["files"] == 4 and scrub["files_not_cached"] == 0
            code, st = replica_status(r)
            assert code == 0 and st["behind_records"] == 0 and st["refused"] == ""
            # (hits are seen by the cache test: a streamed first read is all misses)
            assert st["cache_bytes"] >= 5 * MiB and st["cache_misses"] > 0
            stats = json.loads(run_cli("stats", str(r.path), "--json", check=True).stdout)
            assert stats["files"] == 4 and stats["replica"]["followed_size"] == st[
                "followed_size"]
            prom = run_cli("stats", str(r.path), "--prometheus", check=True).stdout
            assert f'worm_fs_replica_refused{{bucket="s3://{bucket}/store/"' in prom
            assert "worm_fs_replica_cache_hits_total{" in prom
            # The replica's own log is published beside the primary's, signed by its key.
            replica_key = os.getxattr(r.path, "user.worm.pubkey").decode()
            assert replica_key != key
            store_id = replica_key.split("+")[0].removeprefix("worm-fs/")
            wait_for(lambda: rgw.client().list_objects_v2(
                Bucket=bucket, Prefix=f"store/replicas/{store_id}/checkpoint").get("KeyCount"))
        finally:
            r.stop()
    finally:
        p.stop()
    result = run_cli("verify", "--bucket", f"s3://{bucket}/store/replicas/{store_id}",
                     "--s3-endpoint", rgw.endpoint_url, "--pubkey", replica_key)
    assert result.returncode == 0, result.stdout + result.stderr


def test_files_are_readable_on_the_replica_within_seconds_of_close(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    """Under a steady load of new files on the primary, the time from close() there to
    the file being readable, byte-identical, on the replica (--poll 1)."""
    p = replicated(tmp_path, rgw, bucket)
    try:
        (p.path / "warmup").write_bytes(b"w")
        wait_uploaded(p)
        r = replica(tmp_path, rgw, bucket, pubkey(p))
        try:
            closed: dict[str, tuple[float, bytes]] = {}
            stop = threading.Event()

            def writer() -> None:
                n = 0
                while not stop.is_set() and os.path.ismount(p.path):
                    name = f"f{n:04d}.bin"
                    data = os.urandom(64 << 10) + name.encode()
                    (p.path / name).write_bytes(data)
                    closed[name] = (time.monotonic(), data)
                    n += 1
                    time.sleep(0.1)

            latencies = []
            seen: set[str] = set()

            def look_until(deadline: float, done: Callable[[], bool]) -> None:
                while time.monotonic() < deadline and not done():
                    for name, (at, data) in list(closed.items()):
                        if name not in seen and (r.path / name).exists():
                            assert (r.path / name).read_bytes() == data
                            latencies.append(time.monotonic() - at)
                            seen.add(name)
                    time.sleep(0.05)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                look_until(time.monotonic() + 8, lambda: False)  # under the write load
            finally:
                stop.set()
                thread.join()
            # then every file written gets 8 s more to appear
            look_until(time.monotonic() + 8, lambda: len(seen) == len(closed))
            assert sorted(closed) == sorted(seen)  # every file the primary closed
        finally:
            r.stop()
    finally:
        p.stop()
    latencies.sort()
    assert len(latencies) >= 40, len(latencies)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"close on the primary to readable on the replica: p50 {p50:.2f} s, "
          f"p99 {p99:.2f} s over {len(latencies)} files")
    assert p99 <= 5.0, latencies


def test_a_file_whose_chunk_hashes_are_logged_is_served_without_a_whole_file_fetch(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    p = replicated(tmp_path, rgw, bucket)
    data = os.urandom(64 * MiB)
    try:
        (p.path / "big.bin").write_bytes(data)
        wait_sealed(p.path / "big.bin")
        wait_uploaded(p)
        ino = os.stat(p.path / "big.bin").st_ino
        hashes = [rec for rec in records(p) if rec["op"] == "chunk_hashes"]
        assert [rec["ino"] for rec in hashes] == [ino], hashes
        key = pubkey(p)
    finally:
        p.stop()
    r = replica(tmp_path, rgw, bucket, key)
    try:
        wait_for(lambda: (r.path / "big.bin").exists())
        with open(r.path / "big.bin", "rb") as f:
            assert f.read(4096) == data[:4096]
        fetched = wait_for(lambda: replica_status(r)[1].get("fetched_bytes"))
        assert fetched <= 40 * MiB, fetched  # the first chunk and the read-ahead, not 64
        assert (r.path / "big.bin").read_bytes() == data
        code, st = replica_status(r)
        assert code == 0 and st["refusals"] == 0, st
    finally:
        r.stop()


def forged_chunk_list(tmp_path: Path, rgw: Rgw, bucket: str, *, only_version: bool,
                      ) -> tuple[bytes, str, str]:
    """A primary writes model.bin; then its layout object gets a new version whose
    chunk_sha256 list is forged (keys and size intact: its layout digest still holds).
    ``only_version``: the primary's objects are unlocked and the original is deleted
    first. Returns the file's bytes, the layout object's key and the verifier key."""
    extra = ("--object-retention", "0") if only_version else ()
    p = replicated(tmp_path, rgw, bucket, *extra)
    data = os.urandom(3 * MiB)
    try:
        (p.path / "model.bin").write_bytes(data)
        wait_sealed(p.path / "model.bin")
        wait_uploaded(p)
        key = pubkey(p)
    finally:
        p.stop()
    client = rgw.client()
    name = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/files/")["Contents"])
    doc = json.loads(client.get_object(Bucket=bucket, Key=name)["Body"].read())
    if only_version:
        for v in client.list_object_versions(Bucket=bucket, Prefix=name)["Versions"]:
            client.delete_object(Bucket=bucket, Key=name, VersionId=v["VersionId"])
    doc["chunk_sha256"] = [hashlib.sha256(b"forged").hexdigest()] * len(doc["chunks"])
    put_version(rgw, bucket, name, json.dumps(doc).encode())
    return data, name, key


def test_a_rewritten_chunk_sha256_list_is_read_from_its_original(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    data, name, key = forged_chunk_list(tmp_path, rgw, bucket, only_version=False)
    r = replica(tmp_path, rgw, bucket, key)
    try:
        wait_for(lambda: (r.path / "model.bin").exists())
        # before any read, the list the log vouches for is stored: it came from the
        # original version, and the file is then checked chunk by chunk
        ino = os.stat(r.path / "model.bin").st_ino
        wait_for(lambda: any(f.name.startswith(f"{ino}-")
                             for f in (r.state / "cache" / "v").iterdir()))
        assert (r.path / "model.bin").read_bytes() == data
        code, st = wait_for(lambda: (s := replica_status(r))[1]["replaced_objects"] and s)
        assert code == 1 and st["replaced_objects"] == 1 and st["refused"] == "", st
        assert st["replaced_since_start"] == 1, st
        assert name.removeprefix("store/") in st["last_replaced"], st
    finally:
        r.stop()
    r = replica(tmp_path, rgw, bucket, key)  # a restart keeps the count, clears the alarm
    try:
        code, st = replica_status(r)
        assert st["replaced_objects"] == 1 and st["replaced_since_start"] == 0, st
        assert code == 0 and name.removeprefix("store/") in st["last_replaced"], st
        assert (r.path / "model.bin").read_bytes() == data
    finally:
        r.stop()


def test_a_chunk_sha256_list_no_version_vouches_for_is_refused_and_the_file_checked_whole(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    data, name, key = forged_chunk_list(tmp_path, rgw, bucket, only_version=True)
    r = replica(tmp_path, rgw, bucket, key)
    try:
        wait_for(lambda: (r.path / "model.bin").exists())
        st = wait_refused(r)
        assert name.removeprefix("store/") in st["refused"], st
        assert "chunk_sha256" in st["refused"], st
        assert any(rec["op"] == "replica_refused" and rec["object"] == name.removeprefix(
            "store/") for rec in records(r))
        assert not any((r.state / "cache" / "v").iterdir())  # no list was trusted
        assert (r.path / "model.bin").read_bytes() == data  # checked whole instead
    finally:
        r.stop()


def runs_and_keep(p: Mount, old_size: int) -> None:
    """``runs/old.bin`` (in a directory anyone may write, to be deleted) and
    ``keep.bin``, both sealed."""
    (p.path / "runs").mkdir(mode=0o777)
    (p.path / "runs" / "old.bin").write_bytes(os.urandom(old_size))
    (p.path / "keep.bin").write_bytes(os.urandom(MiB))
    for name in ("runs/old.bin", "keep.bin"):
        wait_sealed(p.path / name)


def test_an_approved_deletion_leaves_the_replica_and_its_cache(
    tmp_path: Path, rgw: Rgw, bucket: str, public_base: Path
) -> None:
    from tests.conftest import as_user
    from tests.test_deletion import ADMIN_GID, ALICE, CAROL, request

    p = Mount(public_base / "state", public_base / "mnt", [
        "--allow-other", "--admin-group", str(ADMIN_GID), "--runtime-dir",
        str(public_base / "run"), "--settle", "0", "--bucket", f"s3://{bucket}/store",
        "--s3-endpoint", rgw.endpoint_url, "--object-retention", "0.01"]).start()
    try:
        runs_and_keep(p, 3 * MiB)
        wait_uploaded(p)
        r = replica(tmp_path, rgw, bucket, pubkey(p))
        try:
            wait_for(lambda: (r.path / "runs" / "old.bin").exists())
            old = (r.path / "runs" / "old.bin").read_bytes()
            assert old == (p.path / "runs" / "old.bin").read_bytes()
            cache = r.state / "cache" / "c"
            assert len(os.listdir(cache)) == 3
            rid = request(p, ALICE)
            code, _, err = as_user(CAROL, "delete", "approve", str(p.path), rid)
            assert code == 0, err
            wait_for(lambda: not (r.path / "runs").exists(), timeout=15)
            assert "runs" not in os.listdir(r.path)
            assert len(os.listdir(cache)) == 0  # its chunks went with it
            assert (r.path / "keep.bin").read_bytes() == (p.path / "keep.bin").read_bytes()
            assert len(os.listdir(cache)) == 1
        finally:
            r.stop()
    finally:
        p.stop()


def test_a_file_deleted_before_replication_began_does_not_stall_a_replica(
    tmp_path: Path, rgw: Rgw, bucket: str, public_base: Path
) -> None:
    """Its seal is in the log but its layout object never reaches the bucket (it was
    gone before the uploader could put it): a replica following from the first record
    skips it as deleted, refuses nothing and serves the rest."""
    from tests.conftest import as_user
    from tests.test_deletion import ADMIN_GID, ALICE, CAROL, request

    flags = ["--allow-other", "--admin-group", str(ADMIN_GID), "--runtime-dir",
             str(public_base / "run"), "--settle", "0"]
    p = Mount(public_base / "state", public_base / "mnt", flags).start()
    try:
        runs_and_keep(p, 2 * MiB)
        code, _, err = as_user(CAROL, "delete", "approve", str(p.path), request(p, ALICE))
        assert code == 0, err
    finally:
        p.stop()
    p = Mount(public_base / "state", public_base / "mnt", [
        *flags, "--bucket", f"s3://{bucket}/store", "--s3-endpoint", rgw.endpoint_url,
        "--object-retention", "0.01"]).start()
    try:
        wait_uploaded(p)
        keep = (p.path / "keep.bin").read_bytes()
        r = replica(tmp_path, rgw, bucket, pubkey(p))
        try:
            wait_for(lambda: (r.path / "keep.bin").exists(), timeout=15)
            assert (r.path / "keep.bin").read_bytes() == keep
            assert not (r.path / "runs").exists()
            code, status = replica_status(r)
            assert code == 0 and status["refused"] == "" and status["refusals"] == 0, status
        finally:
            r.stop()
    finally:
        p.stop()


def put_version(rgw: Rgw, bucket: str, key: str, body: bytes) -> None:
    rgw.client().put_object(Bucket=bucket, Key=key, Body=body)


def newest(rgw: Rgw, bucket: str, prefix: str) -> tuple[str, bytes]:
    """The newest tile below ``prefix``: the last index, and of it the widest."""
    client = rgw.client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)
             ["Contents"]]

    def order(name: str) -> tuple[str, int]:
        base, _, width = name.partition(".p/")
        return base, int(width or 256)

    name = max(names, key=order)
    return name, client.get_object(Bucket=bucket, Key=name)["Body"].read()


def test_a_tampered_chunk_is_never_served_and_its_original_is(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    p = replicated(tmp_path, rgw, bucket)
    try:
        good, bad = os.urandom(2 * MiB), os.urandom(2 * MiB)
        (p.path / "good.bin").write_bytes(good)
        (p.path / "bad.bin").write_bytes(bad)
        wait_sealed(p.path / "bad.bin")
        sha_bad = os.getxattr(p.path / "bad.bin", "user.worm.sha256").decode()
        wait_uploaded(p)
        key = pubkey(p)
    finally:
        p.stop()
    client = rgw.client()
    layouts = [json.loads(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
               for o in client.list_objects_v2(Bucket=bucket, Prefix="store/files/")
               ["Contents"]]
    target = next(doc["chunks"][1] for doc in layouts if doc["sha256"] == sha_bad)
    good_layout = next(f"files/{doc['ino']}-{doc['layout']}.json" for doc in layouts
                       if doc["sha256"] != sha_bad)
    put_version(rgw, bucket, f"store/{good_layout}", b'{"chunks": [], "size": 0}')
    r = replica(tmp_path, rgw, bucket, key)
    try:
        wait_for(lambda: (r.path / "bad.bin").exists())
        # S3 cannot refuse a new version of a key: a reader must catch it, and the
        # locked original beneath it still gives the sealed bytes.
        put_version(rgw, bucket, f"store/chunks/{target}", b"x" * MiB)
        assert (r.path / "bad.bin").read_bytes() == bad  # not one byte of the new version
        assert (r.path / "good.bin").read_bytes() == good
        # the layout when the replica first followed the log, then the chunk
        code, st = wait_for(lambda: (s := replica_status(r))[1]["replaced_objects"] == 2
                            and s)
        assert code == 1 and f"chunks/{target}" in st["last_replaced"], st
        prom = run_cli("stats", str(r.path), "--prometheus", check=True).stdout
        assert [line for line in prom.splitlines()
                if line.startswith("worm_fs_replica_replaced_objects_total{")
                ][0].endswith(" 2"), prom
        assert {rec["object"] for rec in records(r) if rec["op"] == "replica_replaced"} == {
            good_layout, f"chunks/{target}"}
    finally:
        r.stop()


def test_a_chunk_hidden_by_a_delete_marker_is_served_from_its_version(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    p = replicated(tmp_path, rgw, bucket)
    try:
        data = os.urandom(2 * MiB)
        (p.path / "model.bin").write_bytes(data)
        wait_sealed(p.path / "model.bin")
        wait_uploaded(p)
        key = pubkey(p)
    finally:
        p.stop()
    client = rgw.client()
    chunk = next(o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix="store/chunks/")["Contents"])
    # Anyone who may put may add a delete marker, Object Lock or not: the locked
    # version beneath it is still there, and still the one the log pins.
    client.delete_object(Bucket=bucket, Key=chunk)
    r = replica(tmp_path, rgw, bucket, key)
    try:
        wait_for(lambda: (r.path / "model.bin").exists())
        assert (r.path / "model.bin").read_bytes() == data
        code, st = wait_for(lambda: (s := replica_status(r))[1]["replaced_objects"] and s)
        assert code == 1 and chunk.removeprefix("store/") in st["last_replaced"], st
        assert st["refused"] == "", st
    finally:
        r.stop()


def test_a_tampered_tile_or_a_forked_log_is_refused_and_the_replica_keeps_serving(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    import shutil

    p = replicated(tmp_path, rgw, bucket)
    try:
        (p.path / "f1.bin").write_bytes(b"one" * 1000)
        wait_sealed(p.path / "f1.bin")
        wait_uploaded(p)
        key = pubkey(p)
    finally:
        p.stop()
    shutil.copytree(p.state, tmp_path / "q-state", symlinks=True)  # the fork's start
    r = replica(tmp_path, rgw, bucket, key)
    r.stop()
    for prefix in ("store/tile/entries/", "store/tile/0/"):
        p.start()
        try:
            name = f"{prefix.split('/')[-2]}.bin"
            (p.path / name).write_bytes(b"two" * 1000)
            wait_sealed(p.path / name)
            wait_uploaded(p)
        finally:
            p.stop()
        target, original = newest(rgw, bucket, prefix)
        put_version(rgw, bucket, target, original[:-40] + b"\0" * 40)  # a new version
        r.start()
        try:
            st = wait_refused(r)
            assert target.removeprefix("store/") in st["refused"], st
            assert (r.path / "f1.bin").read_bytes() == b"one" * 1000  # still served
            assert not (r.path / name).exists()  # nothing of the refused log shown
            assert any(rec["op"] == "replica_refused" for rec in records(r))
            put_version(rgw, bucket, target, original)  # mended: followed again
            wait_for(lambda name=name: (r.path / name).exists())
            assert replica_status(r)[0] == 0
        finally:
            r.stop()
    # A fork: the copy, written on, uploads a longer log signed by the same key.
    fork = Mount(tmp_path / "q-state", tmp_path / "q-mnt", p.options).start()
    try:
        for n in range(8):
            (fork.path / f"fork{n}.bin").write_bytes(b"f" * 100)
        wait_sealed(fork.path / "fork7.bin")
        wait_uploaded(fork)
    finally:
        fork.stop()
    r.start()
    try:
        st = wait_refused(r)
        assert "tile/entries" in st["refused"] or "checkpoint" in st["refused"], st
        assert not (r.path / "fork0.bin").exists()
        assert (r.path / "entries.bin").read_bytes() == b"two" * 1000
    finally:
        r.stop()


def test_the_cache_stays_within_its_bound_and_serves_a_restart_without_the_bucket(
    tmp_path: Path, rgw: Rgw, bucket: str
) -> None:
    p = replicated(tmp_path, rgw, bucket)
    files = {f"m{n}.bin": os.urandom(3 * MiB) for n in range(3)}
    files["big.bin"] = os.urandom(9 * MiB)  # larger than the whole cache
    try:
        for name, data in files.items():
            (p.path / name).write_bytes(data)
        wait_sealed(p.path / "big.bin")
        wait_uploaded(p)
        key = pubkey(p)
    finally:
        p.stop()
    limit = 7 * MiB
    r = replica(tmp_path, rgw, bucket, key, "--cache-size", str(limit / (1 << 30)))
    cache = r.state / "cache" / "c"

    def cached_bytes() -> int:
        return sum(f.stat().st_size for f in cache.iterdir() if not f.name.endswith(".tmp"))

    try:
        wait_for(lambda: (r.path / "big.bin").exists())
        for name in ("big.bin", "m2.bin", "m0.bin", "m1.bin"):  # m0 and m1 stay cached
            data = files[name]
            assert (r.path / name).read_bytes() == data
            assert cached_bytes() <= limit
        with open(r.path / "m1.bin", "rb") as f:  # again, past the kernel's page cache:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # from our cache
            assert f.read() == files["m1.bin"]
        st = wait_for(lambda: (s := replica_status(r)[1])["cache_evicted"] > 0
                      and s["cache_hits"] > 0 and s)
        assert 0 < st["cache_bytes"] <= limit and st["cache_hit_rate"] > 0
    finally:
        r.stop()
    # Restarted with the cluster stopped: what is cached and verified is served.
    ceph_dev("stop")
    try:
        r.start()
        try:
            assert (r.path / "m0.bin").read_bytes() == files["m0.bin"]
            assert (r.path / "m1.bin").read_bytes() == files["m1.bin"]
            with pytest.raises(OSError) as exc:
                (r.path / "big.bin").read_bytes()  # evicted: needs the bucket
            assert exc.value.errno == errno.EIO
            assert wait_for(lambda: replica_status(r)[1]["last_error"])
        finally:
            r.stop()
    finally:
        ceph_dev("start")
