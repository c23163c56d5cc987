"""The ``--replicate sync`` barrier against a real store, with the uploader's side played
by the test: the calls wait exactly as long as their objects and records are queued,
and concurrent calls share one checkpoint."""

from __future__ import annotations

from pathlib import Path

import trio

from worm_fs.replication.sync_barrier import SyncBarrier
from worm_fs.replication.uploader import LOG_UPLOADED
from worm_fs.store import Store, u64, uploads


def stocked_store(path: Path) -> Store:
    """Inode 7 with two chunks queued for upload, a log of 10 records."""
    store = Store(path)
    store.replicating = True
    with store.write() as tx:
        for index, key in enumerate((b"\x01" * 16, b"\x02" * 16)):
            tx.put_manifest(7, index, key)
            tx.queue_upload(uploads.chunk_name(key), 1 << 20)
        tx.put_meta("audit_next_seq", u64(10))
    return store


def uploaded(store: Store, *names: bytes, log_size: int | None = None) -> None:
    with store.write() as tx:
        for name in names:
            tx.done_upload(name)
        if log_size is not None:
            tx.put_meta(LOG_UPLOADED, u64(log_size))


async def test_calls_wait_for_their_chunks_and_the_log_and_share_a_checkpoint(
    tmp_path: Path,
) -> None:
    store = stocked_store(tmp_path)
    signed: list[int] = []
    wakes: list[int] = []

    def sign() -> int:
        signed.append(10)
        return 10

    barrier = SyncBarrier(store, sign, lambda: wakes.append(1))
    returned: list[int] = []

    async def close_one(n: int) -> None:
        await barrier.uploaded(7)
        returned.append(n)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(barrier.run)
            for n in range(5):
                nursery.start_soon(close_one, n)
            await trio.sleep(0.2)
            assert returned == [] and barrier.waiting == 5
            assert signed == [10]  # five calls, one checkpoint
            assert wakes  # the uploader is told at once
            uploaded(store, uploads.chunk_name(b"\x01" * 16), uploads.chunk_name(b"\x02" * 16))
            await trio.sleep(0.2)
            assert returned == []  # the chunks are there, the log is not
            uploaded(store, log_size=9)
            await trio.sleep(0.2)
            assert returned == []  # one record short
            uploaded(store, log_size=10)
            with trio.fail_after(2):
                while len(returned) < 5:
                    await trio.sleep(0.01)
            assert barrier.waiting == 0
            # Nothing queued and the log covered: the next call returns without a new
            # checkpoint.
            with trio.fail_after(2):
                await barrier.uploaded(7)
            assert signed == [10]
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_an_fsync_through_another_handle_waits_for_the_seal_first(tmp_path: Path) -> None:
    from worm_fs.core.model import Inode, Kind, State

    store = stocked_store(tmp_path)
    writing = Inode(ino=7, kind=Kind.FILE, mode=0o644, uid=0, gid=0, parent=1,
                    name=b"m.bin", state=State.WRITING)
    with store.write() as tx:
        tx.put_inode(7, writing.to_bytes())
    uploaded(store, uploads.chunk_name(b"\x01" * 16), uploads.chunk_name(b"\x02" * 16),
             log_size=10)
    barrier = SyncBarrier(store, lambda: 10, lambda: None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(barrier.run)
            done = trio.Event()

            async def sync_file() -> None:
                await barrier.uploaded(7, writer=False)
                done.set()

            nursery.start_soon(sync_file)
            await trio.sleep(0.3)
            assert not done.is_set()  # everything queued is up, but no seal yet
            writing.state, writing.layout = State.SEALED, "cd" * 32
            with store.write() as tx:  # the release arrives: sealed, layout queued
                tx.put_inode(7, writing.to_bytes())
                tx.queue_upload(uploads.file_name(7, "cd" * 32), 0)
            await trio.sleep(0.3)
            assert not done.is_set()  # its layout object is not up yet
            uploaded(store, uploads.file_name(7, "cd" * 32))
            with trio.fail_after(2):
                await done.wait()
            # Through the writer's own handle the seal is never waited for.
            with store.write() as tx:
                tx.put_inode(8, Inode(ino=8, kind=Kind.FILE, mode=0o644, uid=0, gid=0,
                                      parent=1, name=b"w", state=State.WRITING).to_bytes())
            with trio.fail_after(1):
                await barrier.uploaded(8)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
