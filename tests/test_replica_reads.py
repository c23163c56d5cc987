"""The replica's read path with a fake bucket (a dict): a file's bytes are served only
after they gave its sealed SHA-256, and a chunk fetched again must match the SHA-256 it
was verified with. (XXH3 keys cannot be made to collide here; these checks are what
stands when they can.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from worm_fs.core.layout import layout_digest
from worm_fs.core.model import Inode, Kind, State
from worm_fs.errors import UntrustedData
from worm_fs.replication.chunk_cache import ChunkCache
from worm_fs.replication.replica_reads import READ_AHEAD, ReplicaChunks, chunk_object
from worm_fs.store import CHUNK_SIZE, Store
from worm_fs.store.chunks import digest

MiB = 1 << 20


class FakeBucket:
    """Objects by name (the newest version), with the versions they replaced; counts
    GETs."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.replaced: dict[str, list[bytes]] = {}  # older versions, oldest first
        self.gets = 0
        self.fetched: list[str] = []

    def replace(self, name: str, data: bytes) -> None:
        """A new version of ``name`` (S3 cannot refuse one); the old one stays."""
        self.replaced.setdefault(name, []).append(self.objects[name])
        self.objects[name] = data

    def versions(self, name: str) -> list[str]:
        older = self.replaced.get(name, [])
        return ["newest", *(f"v{n}" for n in reversed(range(len(older))))] \
            if name in self.objects else []

    def get(self, name: str, version_id: str | None = None) -> bytes | None:
        self.gets += 1
        if version_id is None or version_id == "newest":
            return self.objects.get(name)
        return self.replaced[name][int(version_id[1:])]

    def fetch(self, name: str) -> bytes | None:
        self.fetched.append(name)
        return self.get(name)

    def close(self) -> None:
        pass


def sealed_file(store: Store, bucket: FakeBucket, ino: int, data: bytes,
                sha256: str | None = None) -> list[bytes]:
    """A sealed file in the replica's store, its chunks in the bucket only."""
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
    keys = [digest(p) + b"\0" for p in pieces]
    for key, piece in zip(keys, pieces, strict=True):
        bucket.objects[chunk_object(key)] = piece
    inode = Inode(ino, Kind.FILE, 0o444, 0, 0, 1, f"f{ino}".encode(), state=State.SEALED,
                  size=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest(),
                  layout=layout_digest(len(data), keys))
    with store.write() as tx:
        tx.put_inode(ino, inode.to_bytes())
        for index, key in enumerate(keys):
            tx.put_manifest(ino, index, key)
    return keys


@pytest.fixture
def parts(tmp_path: Path):
    (tmp_path / "state").mkdir()
    store = Store(tmp_path / "state")
    bucket = FakeBucket()
    refused: list[tuple[str, str]] = []
    cache = ChunkCache(tmp_path / "cache", 64 * MiB)
    chunks = ReplicaChunks(store, bucket, cache, on_refused=lambda o, d: refused.append((o, d)))
    yield store, bucket, cache, chunks, refused
    chunks.close()
    store.close()


def test_a_file_is_served_once_its_bytes_give_its_sealed_sha256(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    data = bytes(range(256)) * (3 * MiB // 256) + b"tail"
    keys = sealed_file(store, bucket, 5, data)
    served = b"".join(chunks.chunk(5, i, k) for i, k in enumerate(keys))
    assert served == data and refused == []
    assert cache.verified(5, layout_digest(len(data), keys)) is not None
    gets = bucket.gets
    assert chunks.chunk(5, 0, keys[0]) == data[:CHUNK_SIZE]  # from the cache now
    assert bucket.gets == gets


def test_with_chunk_hashes_the_log_vouches_for_a_read_fetches_no_whole_file(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    data = os.urandom(40 * MiB)
    keys = sealed_file(store, bucket, 10, data)
    shas = [hashlib.sha256(data[i : i + CHUNK_SIZE]).digest()
            for i in range(0, len(data), CHUNK_SIZE)]
    cache.set_verified(10, layout_digest(len(data), keys), shas)  # as the follower does
    assert chunks.chunk(10, 2, keys[2]) == data[2 * MiB : 3 * MiB]
    fetched = {name for name in bucket.fetched}
    assert chunk_object(keys[0]) not in fetched and chunk_object(keys[1]) not in fetched
    assert chunk_object(keys[2]) in fetched and len(fetched) <= 1 + READ_AHEAD
    # a replaced chunk fails its own SHA-256 and is not served
    bucket.objects[chunk_object(keys[39])] = data[: CHUNK_SIZE]
    cache.drop([keys[39]])
    with pytest.raises(UntrustedData):
        chunks.chunk(10, 39, keys[39])
    assert refused and refused[-1][0] == chunk_object(keys[39])


def test_a_file_whose_bytes_do_not_give_its_sealed_sha256_is_refused(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    keys = sealed_file(store, bucket, 6, b"a" * (2 * MiB), sha256="0" * 64)
    with pytest.raises(UntrustedData):
        chunks.chunk(6, 0, keys[0])
    assert refused and "sealed SHA-256" in refused[0][1]
    assert cache.verified(6, layout_digest(2 * MiB, keys)) is None


def test_chunks_of_a_file_that_failed_its_check_are_not_served_to_another(parts) -> None:
    """A whole-file check does not cache what it fetched (checked against keys only), so
    a file vouched for chunk by chunk that shares a chunk fetches it and checks it
    against its own SHA-256 instead of taking cached bytes."""
    store, bucket, cache, chunks, refused = parts
    data = b"d" * MiB + b"e" * MiB
    keys = sealed_file(store, bucket, 8, data, sha256="0" * 64)  # fails its check
    with pytest.raises(UntrustedData):
        chunks.chunk(8, 0, keys[0])
    assert not any(cache.holds(k) for k in keys)
    # File 9 shares chunk 0; the log vouches for other bytes there.
    keys9 = sealed_file(store, bucket, 9, b"d" * MiB)
    assert keys9[0] == keys[0]
    cache.set_verified(9, layout_digest(MiB, keys9), [hashlib.sha256(b"other").digest()])
    with pytest.raises(UntrustedData):
        chunks.chunk(9, 0, keys9[0])
    assert refused[-1][0] == chunk_object(keys[0])


def test_a_chunk_fetched_again_must_match_what_its_file_was_verified_with(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    data = b"b" * MiB + b"c" * MiB
    keys = sealed_file(store, bucket, 7, data)
    assert chunks.chunk(7, 1, keys[1]) == b"c" * MiB
    layout = layout_digest(len(data), keys)
    shas = cache.verified(7, layout)
    assert shas is not None
    cache.drop(keys)  # evicted; then the remembered SHA-256 is all that vouches
    cache.set_verified(7, layout, [shas[0], hashlib.sha256(b"other").digest()])
    restarted = ReplicaChunks(store, bucket, cache,
                              on_refused=lambda o, d: refused.append((o, d)))
    try:
        with pytest.raises(UntrustedData):
            restarted.chunk(7, 1, keys[1])
    finally:
        restarted.close()
    assert any(obj == chunk_object(keys[1]) for obj, _ in refused)


def test_a_replaced_chunk_is_served_from_the_older_version_that_checks(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    replaced: list[tuple[str, str]] = []
    chunks.on_replaced = lambda o, d: replaced.append((o, d))
    data = b"d" * MiB + b"e" * MiB
    keys = sealed_file(store, bucket, 8, data)
    bucket.replace(chunk_object(keys[1]), b"f" * MiB)  # fails its key
    assert b"".join(chunks.chunk(8, i, k) for i, k in enumerate(keys)) == data
    assert refused == [] and [o for o, _ in replaced] == [chunk_object(keys[1])]
    assert chunks.stats()["replaced_chunks"] == 1
    # Refetched after eviction: the newest version fails the remembered SHA-256 too.
    cache.drop(keys)
    chunks2 = ReplicaChunks(store, bucket, cache, on_replaced=lambda o, d: replaced.append(
        (o, d)))
    try:
        assert chunks2.chunk(8, 1, keys[1]) == b"e" * MiB
    finally:
        chunks2.close()
    assert len(replaced) == 2


def test_a_chunk_no_version_of_which_checks_is_refused(parts) -> None:
    store, bucket, cache, chunks, refused = parts
    keys = sealed_file(store, bucket, 9, b"g" * MiB)
    bucket.objects[chunk_object(keys[0])] = b"h" * MiB  # the only version, wrong
    with pytest.raises(UntrustedData):
        chunks.chunk(9, 0, keys[0])
    assert refused and refused[0][0] == chunk_object(keys[0])
    assert "no version" in refused[0][1]


def test_the_cache_evicts_the_least_recently_used_within_its_bound(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "cache", 3 * MiB, memory=0)
    blobs = {digest(bytes([n]) * MiB) + b"\0": bytes([n]) * MiB for n in range(4)}
    keys = list(blobs)
    for key in keys[:3]:
        assert cache.put(key, blobs[key])
    assert cache.get(keys[0]) == blobs[keys[0]]  # now the most recently used
    cache.put(keys[3], blobs[keys[3]])
    assert cache.bytes <= 3 * MiB and not cache.holds(keys[1]) and cache.holds(keys[0])
    assert not cache.put(b"x" * 17, b"x" * (4 * MiB))  # larger than the cache
    (tmp_path / "cache" / "c" / keys[0].hex()).write_bytes(b"damaged")
    assert cache.get(keys[0]) is None and not cache.holds(keys[0])  # dropped, not served
    reopened = ChunkCache(tmp_path / "cache", 1 * MiB)  # a lower bound at the next start
    assert reopened.bytes <= 1 * MiB


def test_recent_chunks_are_served_from_memory_as_checked(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "cache", 8 * MiB, memory=2 * MiB)
    blobs = {digest(bytes([n]) * MiB) + b"\0": bytes([n]) * MiB for n in range(3)}
    keys = list(blobs)
    for key in keys:
        cache.put(key, blobs[key])
    for key in keys:  # damaged on disk after they were put
        (tmp_path / "cache" / "c" / key.hex()).write_bytes(b"damaged")
    assert cache.get(keys[2]) == blobs[keys[2]]  # in memory: checked when it came in
    assert cache.get(keys[0]) is None and not cache.holds(keys[0])  # out of memory: disk
    cache.drop([keys[2]])
    assert cache.get(keys[2]) is None  # dropped from memory too
