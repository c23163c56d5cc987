"""The upload queue's bookkeeping against a real store and committer (no bucket is
contacted): what a finished round drops from the queue, and what a new bucket resets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from worm_fs.audit.log import AuditLog
from worm_fs.core.fs import WormCore
from worm_fs.replication.s3 import Bucket, BucketUrl
from worm_fs.replication.uploader import (
    BATCH,
    LOG_UPLOADED,
    Uploader,
    _take_oldest,
    queue_existing,
)
from worm_fs.store import Store, WriteTxn, env, u64, uploads
from worm_fs.store.chunks import put_chunk, release_chunk
from worm_fs.store.uploads import BUCKET_META

CHUNK = b"the same bytes, written by two files" * 1000


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WormCore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    store = Store(tmp_path)
    store.replicating = True
    core = WormCore(store, AuditLog(boot_id="test"), settle_s=0)
    core.initialize()
    core.start()
    yield core
    core.close()
    core.store.close()


def queued(core: WormCore, name: bytes) -> bool:
    with core.store.read() as rt:
        return rt.upload_queued(name)


def uploader_of(core: WormCore) -> Uploader:
    # Nothing listens there and nothing is uploaded: only _finish is called.
    return Uploader(core, Bucket(BucketUrl.parse("s3://unused/p"),
                                 endpoint="http://127.0.0.1:9"))


def queued_at(core: WormCore, name: bytes) -> int:
    with core.store.read() as rt:
        return next(t for n, t, _ in rt.iter_uploads() if n == name)


def test_a_chunk_gone_at_upload_but_stored_again_stays_queued(core: WormCore) -> None:
    key = core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    name = uploads.chunk_name(key)
    taken = {name: queued_at(core, name)}  # the uploader takes it...
    core.commit(lambda tx, batch: release_chunk(tx, key))
    assert not queued(core, name)  # ...freed: nothing to upload any more
    # The worker found it gone; before the round ends, another file stores the same
    # bytes, which queues it again.
    core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    uploader_of(core)._finish(taken, 0, 0, None, [])
    assert queued(core, name), "the bucket would never get this chunk"
    # Gone and not stored again: dropped.
    taken = {name: queued_at(core, name)}
    core.commit(lambda tx, batch: release_chunk(tx, key))
    uploader_of(core)._finish(taken, 0, 0, None, [])
    assert not queued(core, name)
    # Uploaded and untouched meanwhile: dropped as taken.
    core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    uploader_of(core)._finish({name: queued_at(core, name)}, 1, len(CHUNK), None, [])
    assert not queued(core, name)


def test_a_new_bucket_gets_the_whole_log_again(core: WormCore) -> None:
    core.commit(lambda tx, batch: (tx.put_meta(BUCKET_META, b"s3://old/p/"),
                                   tx.put_meta(LOG_UPLOADED, u64(500))))
    assert queue_existing(core, "s3://old/p/") == 0  # the same bucket: nothing to redo
    with core.store.read() as rt:
        assert rt.get_counter(LOG_UPLOADED) == 500
    queue_existing(core, "s3://new/p/")
    with core.store.read() as rt:
        assert rt.get_counter(LOG_UPLOADED) == 0  # tiles from the first record on
        assert rt.get_meta(BUCKET_META) == b"s3://new/p/"


def queue(core: WormCore, *names: bytes) -> None:
    """One commit queueing ``names`` (sizes 1)."""
    core.commit(lambda tx, batch: [tx.queue_upload(name, 1) for name in names])


def test_a_round_takes_the_oldest_so_newer_chunks_cannot_hold_back_a_seal(
        core: WormCore) -> None:
    # A file's last chunk and its layout, then the checkpoint covering its seal. The
    # chunk's name sorts after everything queued later.
    old_chunk = uploads.CHUNK + b"f" * 32
    layout = uploads.file_name(7, "ab" * 32)
    queue(core, old_chunk, layout)
    queue(core, uploads.log_name(12))
    # A long queue of newer chunks (a busy writer, or a backlog after an outage).
    newer = [uploads.CHUNK + f"{i:032x}".encode() for i in range(BATCH + 10)]
    for start in range(0, len(newer), 100):
        queue(core, *newer[start:start + 100])
    taken: dict[bytes, int] = {}
    with core.store.read() as rt:
        chunks, files, logs = _take_oldest(rt, taken)
    assert chunks[0] == old_chunk and files == [layout] and logs == [uploads.log_name(12)]
    assert len(taken) == BATCH
    assert chunks[1:] == newer[:BATCH - 3]  # then the next oldest, in queue order
    # What a round leaves for the next is all newer than what it took.
    with core.store.read() as rt:
        rest = [t for n, t, _ in rt.iter_uploads_by_age() if n not in taken]
        assert rt.oldest_upload_ns() == queued_at(core, old_chunk)
    assert min(rest) >= max(taken.values())


def test_the_queue_order_is_commit_order_when_the_clock_goes_back(
        core: WormCore, monkeypatch: pytest.MonkeyPatch) -> None:
    queue(core, uploads.chunk_name(b"\x01" * 16))
    monkeypatch.setattr(env.time, "time_ns", lambda: 1)  # set back to 1970
    queue(core, uploads.chunk_name(b"\x02" * 16), uploads.file_name(3, "cd" * 32))
    with core.store.read() as rt:
        order = [name for name, _, _ in rt.iter_uploads_by_age()]
    assert order == [uploads.chunk_name(b"\x01" * 16), uploads.chunk_name(b"\x02" * 16),
                     uploads.file_name(3, "cd" * 32)]


def test_a_queue_without_its_age_index_is_indexed_when_the_store_opens(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.replicating = True
    names = [uploads.LOG + b"9", uploads.FILE + b"3/ab", uploads.CHUNK + b"5"]
    for name in names:  # three commits: the log first, as a clock set back could leave it
        with store.write() as tx:
            tx.queue_upload(name, 1)
    with store.read() as rt:
        before = list(rt.iter_uploads_by_age())
    with store.write() as tx:  # what a store kept by a version without the index holds
        for name, queued_ns, _ in before[1:]:
            tx.raw_delete("upload_order", u64(queued_ns) + name)
    store.close()
    reopened = Store(tmp_path)
    reopened.replicating = True
    try:
        with reopened.read() as rt:
            after = list(rt.iter_uploads_by_age())
            by_name = {name: queued_ns for name, queued_ns, _ in rt.iter_uploads()}
        # One stamp for all, later than any before: the kinds go in name order again.
        assert [name for name, _, _ in after] == sorted(names)
        assert len({t for _, t, _ in after}) == 1 and after[0][1] > before[-1][1]
        assert by_name == {name: t for name, t, _ in after}
        with reopened.write() as tx:  # and they leave the queue as they are taken
            for name, queued_ns, _ in after:
                tx.done_upload(name, queued_ns)
        with reopened.read() as rt:
            assert list(rt.iter_uploads_by_age()) == [] and rt.count_uploads() == 0
    finally:
        reopened.close()


def test_a_new_bucket_queues_everything_in_kind_order_after_a_recovered_seal(
        core: WormCore) -> None:
    # Recovery, before the new bucket's queue_existing: a seal queues its layout while
    # the file's chunks (stored by a mount without a bucket) are not queued.
    with core.store.read() as rt:
        assert rt.count_uploads() == 0
    def store_unqueued(tx: WriteTxn, batch: object) -> list[bytes]:
        keys = [put_chunk(tx, f"chunk {i}".encode()) for i in range(BATCH + 1)]
        for key in keys:
            tx.done_upload(uploads.chunk_name(key))
        return keys

    keys = core.commit(store_unqueued)
    layout = uploads.file_name(4, "ef" * 32)
    queue(core, layout)
    queue_existing(core, "s3://new/p/")
    taken: dict[bytes, int] = {}
    with core.store.read() as rt:
        chunks, files, _ = _take_oldest(rt, taken)
    # More chunks than a round takes: the layout waits for a later round.
    assert files == [] and len(chunks) == BATCH
    assert set(chunks) <= {uploads.chunk_name(key) for key in keys}


def test_a_stale_index_entry_leaves_the_queue_when_taken(core: WormCore) -> None:
    name = uploads.chunk_name(b"\x07" * 16)
    queue(core, name)
    t = queued_at(core, name)
    core.commit(lambda tx, batch: tx.raw_delete("uploads", name))  # index out of step
    core.commit(lambda tx, batch: tx.done_upload(name, t))
    with core.store.read() as rt:
        assert list(rt.iter_uploads_by_age()) == []
