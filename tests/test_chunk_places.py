"""Chunk places (``store/places.py``) and the reads built on them (``core/reads.py``),
on a real LMDB environment and a real core (no mount)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lmdb
import pytest

from tests.test_core import ALICE, FakeClock, open_core, write_file
from worm_fs.audit.log import AuditLog
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.store import Store, put_chunk, read_chunk, release_chunk
from worm_fs.store.places import decode_place, encode_place, merged

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path)
    yield s
    s.close()


def place(store: Store, key: bytes) -> tuple[int, int] | None:
    with store.read() as rt:
        return rt.chunk_places([key])[0]


def data_file_bytes(store: Store, offset: int, length: int) -> bytes:
    with open(store.path / "store" / "data.mdb", "rb") as f:
        f.seek(offset)
        return f.read(length)


def drop_from_page_cache(store: Store) -> None:
    fd = os.open(store.path / "store" / "data.mdb", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_chunk_gets_its_exact_place_with_the_next_commit(store: Store) -> None:
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
    assert store.places_pending
    assert place(store, key) is None  # taken after the commit, recorded by the next
    store.record_places()
    assert not store.places_pending
    offset, length = place(store, key)
    assert length == MIB
    assert data_file_bytes(store, offset, length) == data
    with store.read() as rt:
        assert rt.get_chunk(key) == data == rt.get_chunk_from_map(key)
        assert rt.chunk_size(key) == MIB


def test_a_value_inside_a_leaf_page_gets_no_place(store: Store) -> None:
    with store.write() as tx:
        key = put_chunk(tx, b"small")
    store.record_places()
    assert place(store, key) is None
    with store.read() as rt:
        assert read_chunk(rt, key) == b"small"


def test_a_freed_chunk_loses_its_place_and_a_stored_again_one_gets_a_new_one(
        store: Store) -> None:
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
        filler = put_chunk(tx, os.urandom(MIB))
    store.record_places()
    assert place(store, key) is not None
    with store.write() as tx:
        assert release_chunk(tx, key) == MIB
    assert place(store, key) is None
    with store.write() as tx:  # LMDB reuses the freed pages from the commit after next
        release_chunk(tx, filler)
    with store.write() as tx:
        put_chunk(tx, data)
    store.record_places()
    again = place(store, key)
    assert again is not None
    assert data_file_bytes(store, *again) == data


def test_a_chunk_stored_and_freed_in_one_transaction_leaves_no_place(store: Store) -> None:
    with store.write() as tx:
        key = put_chunk(tx, os.urandom(MIB))
        release_chunk(tx, key)
    store.record_places()
    assert not store.places_pending
    assert place(store, key) is None


def test_a_rewritten_chunk_loses_its_place(store: Store) -> None:
    with store.write() as tx:
        key = put_chunk(tx, os.urandom(MIB))
    store.record_places()
    with store.write() as tx:
        tx.raw_put("chunks", key, os.urandom(MIB))
    assert place(store, key) is None


def test_bytes_not_at_their_place_fall_back_to_lmdbs_copy(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    data, other = os.urandom(MIB), os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
        other_key = put_chunk(tx, other)
    store.record_places()
    with store.write() as tx:  # a wrong place (a bug): it must never serve wrong bytes
        tx.raw_put("chunk_places", key, encode_place(*place(store, other_key)))
    with store.read() as rt, caplog.at_level(logging.WARNING):
        assert read_chunk(rt, key) == data
    assert "not at its recorded place" in caplog.text


def test_a_resident_read_needs_the_place_recorded_in_its_own_transaction(
        store: Store) -> None:
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
        tx.put_manifest(5, 0, key)
    store.record_places()
    where = place(store, key)
    with store.read() as rt:
        assert rt.read_file_chunk_at(5, 0, where, resident_only=True) == data
    with store.write() as tx:
        tx.delete_manifest(5, 0)
        release_chunk(tx, key)
    with store.read() as rt:  # freed: its pages may be reused, so not read there
        assert rt.read_file_chunk_at(5, 0, where) is None


def test_a_resident_read_answers_none_for_pages_not_in_the_page_cache(
        store: Store) -> None:
    data = os.urandom(4 * MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
        tx.put_manifest(5, 0, key)
    store.record_places()
    where = place(store, key)
    drop_from_page_cache(store)
    with store.read() as rt:
        assert rt.read_file_chunk_at(5, 0, where, resident_only=True) is None
        assert rt.read_file_chunk_at(5, 0, where) == data  # waits for the disk
        assert rt.read_file_chunk_at(5, 0, where, resident_only=True) == data


def test_a_manifest_row_gets_the_place_of_the_chunk_it_names(store: Store) -> None:
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
        tx.put_manifest(7, 0, key)
    store.record_places()
    with store.read() as rt:
        assert rt.file_places(7) == {0: place(store, key)}
    with store.write() as tx:  # a row naming a chunk placed before gets it at once
        tx.put_manifest(8, 3, put_chunk(tx, data))
    with store.read() as rt:
        assert rt.file_places(8) == {3: place(store, key)}
        assert rt.read_file_chunk_at(8, 3, place(store, key)) == data
    with store.write() as tx:
        tx.delete_manifest(8, 3)
    with store.read() as rt:
        assert rt.file_places(8) == {}
        assert rt.read_file_chunk_at(8, 3, place(store, key)) is None


def test_places_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
    store.record_places()
    where = place(store, key)
    store.close()
    for readonly in (False, True, False):
        store = Store(tmp_path, readonly=readonly)
        try:
            assert place(store, key) == where
        finally:
            store.close()


def test_a_commit_by_a_version_without_places_drops_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.write() as tx:
        key = put_chunk(tx, os.urandom(MIB))
        put_chunk(tx, os.urandom(MIB))
    store.record_places()
    store.close()
    # What an older daemon's commit looks like: chunks freed and stored, no stamp.
    env = lmdb.open(str(tmp_path / "store"), max_dbs=20, subdir=True)
    with env.begin(write=True) as txn:
        txn.delete(key, db=env.open_db(b"chunks", txn=txn))
    env.close()
    readonly = Store(tmp_path, readonly=True)
    try:  # read-only: not trusted, not used
        with readonly.read() as rt:
            assert rt.get_chunk(key) is None
    finally:
        readonly.close()
    store = Store(tmp_path)
    try:  # read-write: dropped
        with store.read() as rt:
            assert rt._txn.stat(rt._db["chunk_places"])["entries"] == 0
    finally:
        store.close()


def test_a_place_whose_chunk_is_gone_is_not_used(store: Store) -> None:
    data = os.urandom(MIB)
    with store.write() as tx:
        key = put_chunk(tx, data)
    store.record_places()
    with store.write() as tx:  # a chunk row gone, its place left (only a bug does it)
        tx._txn.delete(key, db=tx._db["chunks"])
    with store.read() as rt:
        assert rt.chunk_places([key]) == [None]
        assert rt.get_chunk(key) is None
        assert rt.chunk_size(key) is None


def test_neighbouring_ranges_are_read_ahead_as_one() -> None:
    assert merged([(0, 100), (116, 100), (300_000, 10), (100, 5)]) == [
        (0, 216), (300_000, 10), (100, 5)]
    assert decode_place(encode_place(1 << 40, MIB)) == (1 << 40, MIB)
    assert decode_place(b"short") is None


# ------------------------------------------------------------------ core reads
@pytest.fixture
def core(tmp_path: Path):
    c = open_core(tmp_path, FakeClock())
    yield c
    c.store.close()


def sealed_file(core: WormCore, data: bytes) -> int:
    ino = write_file(core, b"f", data)
    core.store.record_places()
    return ino


def test_a_sealed_file_is_read_from_the_page_cache_only_after_its_layout_check(
        core: WormCore) -> None:
    data = os.urandom(3 * MIB + 100_000)
    ino = sealed_file(core, data)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    assert core.read_resident(fh, 0, MIB) is None  # layout not checked yet
    assert core.read(fh, 0, MIB) == data[:MIB]
    # From here on chunks in the page cache are served without a thread.
    assert core.read_resident(fh, MIB, MIB) == data[MIB:2 * MIB]
    assert core.read_resident(fh, MIB + 5, 2 * MIB) == data[MIB + 5:3 * MIB + 5]
    assert core.read_resident(fh, 3 * MIB, MIB) == data[3 * MIB:]
    assert core.read_resident(fh, 4 * MIB, MIB) == b""  # past the end
    core.release(fh)


def test_a_resident_read_leaves_chunks_not_in_the_page_cache_to_the_thread(
        core: WormCore) -> None:
    data = os.urandom(4 * MIB)
    ino = sealed_file(core, data)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    assert core.read(fh, 0, 10) == data[:10]
    drop_from_page_cache(core.store)
    assert core.read_resident(fh, 3 * MIB, MIB) is None
    assert core.read(fh, 3 * MIB, MIB) == data[3 * MIB:]
    core.release(fh)


def test_a_sequential_read_asks_the_disk_for_the_chunks_ahead(core: WormCore) -> None:
    data = os.urandom(6 * MIB)
    ino = sealed_file(core, data)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    drop_from_page_cache(core.store)
    assert core.read(fh, 0, MIB) == data[:MIB]  # reads chunk 0, asks for 1..5
    assert_read_ahead(core, fh, data)
    core.release(fh)


def assert_read_ahead(core: WormCore, fh: int, data: bytes) -> None:
    """Chunks 1 to 5 of ``data`` come into the page cache: nothing else reads them."""
    deadline = time.monotonic() + 10
    while core.read_resident(fh, 5 * MIB, MIB) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert core.read_resident(fh, MIB, 5 * MIB) == data[MIB:]


def test_a_second_pass_over_a_file_is_read_ahead_again(core: WormCore) -> None:
    data = os.urandom(6 * MIB)
    ino = sealed_file(core, data)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    for index in range(6):
        assert core.read(fh, index * MIB, MIB) == data[index * MIB:(index + 1) * MIB]
    drop_from_page_cache(core.store)
    assert core.read(fh, 0, MIB) == data[:MIB]  # a seek back to the start
    assert_read_ahead(core, fh, data)
    core.release(fh)


def test_a_deleted_files_chunks_are_not_read_at_their_old_places(core: WormCore) -> None:
    data = os.urandom(2 * MIB)
    ino = sealed_file(core, data)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    assert core.read(fh, 0, 10) == data[:10]
    with core.store.write() as tx:  # the chunks freed under the open handle
        for index, key in list(tx.iter_manifest(ino)):
            tx.delete_manifest(ino, index)
            release_chunk(tx, key)
    assert core.read_resident(fh, MIB, MIB) is None
    core.release(fh)


def test_the_committer_records_places_when_no_other_commit_comes(tmp_path: Path) -> None:
    core = WormCore(Store(tmp_path), AuditLog(boot_id="test"), settle_s=0)
    core.initialize()
    core.start()
    try:
        fh, inode = core.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, ALICE)
        core.write(fh, 0, os.urandom(2 * MIB + MIB // 2))
        core.flush(fh)  # its commit stores the last chunk, and no commit follows it
        deadline = time.monotonic() + 10
        while core.store.places_pending and time.monotonic() < deadline:
            time.sleep(0.01)
        with core.store.read() as rt:
            keys = [key for _, key in rt.iter_manifest(inode.ino)]
            assert len(keys) == 3
            assert all(where is not None for where in rt.chunk_places(keys))
        core.release(fh)
    finally:
        core.close()
        core.store.close()
