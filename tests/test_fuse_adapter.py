"""The pyfuse3 adapter below a mount: errno mapping, waiting for a commit without a
thread (the core's committer wakes the event loop), and readdir offsets."""

from __future__ import annotations

import errno
import logging
import threading

import pyfuse3
import pytest
import trio

from worm_fs.core.committer import Ticket
from worm_fs.core.model import Inode, Kind, State
from worm_fs.errors import NoSpace, Refused
from worm_fs.fuse_ops import WormOperations, _committed_ticket, _guard


@_guard
async def raises(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize("exc, expected", [
    (Refused("no", errno=errno.EEXIST), errno.EEXIST),
    (NoSpace(), errno.ENOSPC),
    (pyfuse3.FUSEError(errno.ENOTDIR), errno.ENOTDIR),
])
async def test_product_errors_become_their_errno(exc: BaseException, expected: int) -> None:
    with pytest.raises(pyfuse3.FUSEError) as got:
        await raises(exc)
    assert got.value.errno == expected


async def test_a_bug_is_eio_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as got:
        await raises(KeyError("surprise"))
    assert got.value.errno == errno.EIO
    assert any(r.exc_info and "raises" in r.getMessage() for r in caplog.records)


async def test_a_ticket_resolved_by_another_thread_wakes_the_loop() -> None:
    ticket = Ticket()
    timer = threading.Timer(0.05, ticket._resolve)
    timer.start()
    with trio.fail_after(10):
        await _committed_ticket(ticket)
    assert ticket.done
    timer.join()


async def test_an_already_resolved_ticket_does_not_wait() -> None:
    ticket = Ticket()
    ticket._resolve()
    with trio.fail_after(1):
        await _committed_ticket(ticket)


class ListingCore:
    """Just enough of a core for opendir/readdir."""

    def __init__(self, names: list[bytes]) -> None:
        self.listing = [(name, Inode(ino=n + 1, kind=Kind.FILE, mode=0o444, uid=0, gid=0,
                                     parent=1, name=name)) for n, name in enumerate(names)]

    def readdir(self, ino: int, *, dots: bool = False) -> list[tuple[bytes, Inode]]:
        assert dots  # the kernel always gets . and ..
        return self.listing


class Batch:
    """A readdir reply buffer with room for ``room`` entries."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[bytes, int, int]] = []

    def add(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.entries) == self.room:
            return False  # did not fit: the kernel asks again from the last next_id
        self.entries.append((name, attr.st_ino, next_id))
        return True


async def test_readdir_replies_cut_at_any_batch_size_resume_without_loss_or_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [b".", b".."] + [f"entry-{i:03d}".encode() for i in range(100)]
    ops = WormOperations(ListingCore(names))  # type: ignore[arg-type]
    monkeypatch.setattr(pyfuse3, "readdir_reply", lambda token, *args: token.add(*args))
    fh = await ops.opendir(1, None)
    for room in (1, 7, 64, 1000):
        seen: list[bytes] = []
        offset = 0
        while True:
            batch = Batch(room)
            await ops.readdir(fh, offset, batch)
            if not batch.entries:
                break
            seen += [name for name, _, _ in batch.entries]
            offset = batch.entries[-1][2]
        assert seen == names, room
    batch = Batch(1000)
    await ops.readdir(fh, 40, batch)  # seekdir() to an offset handed out earlier
    assert [name for name, _, _ in batch.entries] == names[40:]
    await ops.releasedir(fh)


class HandleCore:
    """Just enough of a core for flush and release: ``writer_fh`` is the writer of
    inode 7, any other handle a reader of it. Release always takes the slow path (a
    worker thread), where another request could be answered meanwhile."""

    def __init__(self, writer_fh: int, events: list[object]) -> None:
        self.writer_fh = writer_fh
        self.events = events
        self.writers = {7}

    def handle_file(self, fh: int) -> tuple[int, bool]:
        return 7, fh == self.writer_fh

    def flush_is_noop(self, fh: int) -> bool:
        return True

    def release_if_quick(self, fh: int) -> bool:
        return False

    def release(self, fh: int) -> None:
        if fh == self.writer_fh:
            self.writers.discard(7)
        self.events.append(("released", fh))

    def has_writer(self, ino: int) -> bool:
        return ino in self.writers

    def getattr(self, ino: int) -> Inode:
        return Inode(ino=ino, kind=Kind.FILE, mode=0o644, uid=0, gid=0, parent=1,
                     name=b"f", state=State.WRITING)


async def test_a_writers_close_and_release_drop_the_files_cached_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While its writer holds it, a file being written has its attributes cached (1 s);
    once released, until its seal commits, not at all. Its writer's flush (every
    close) drops them before close() returns, so a stat after close asks the daemon;
    its release drops them after the writer is gone, so what a stat cached between
    the two cannot outlive the seal. A reader's close drops nothing."""
    events: list[object] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode",
                        lambda ino, attr_only=False: events.append(("forget", ino, attr_only)))
    core = HandleCore(writer_fh=1, events=events)
    ops = WormOperations(core)  # type: ignore[arg-type]

    assert (await ops.getattr(7, None)).attr_timeout == 1.0  # the writer holds it
    await ops.flush(2)
    await ops.release(2)
    assert events == [("released", 2)]  # a reader's: nothing dropped

    events.clear()
    await ops.flush(1)
    assert events == [("forget", 7, True)]
    await ops.release(1)
    assert events == [("forget", 7, True), ("released", 1), ("forget", 7, True)]
    assert (await ops.getattr(7, None)).attr_timeout == 0  # released, not yet sealed
