"""File data: opening, reading, writing and flushing, top to bottom.

The data path of a new file: :meth:`~worm_fs.core.namespace.NamespaceOps.create` →
:meth:`FileOps.write_buffered` (bytes copied into the writer's chunk buffers; full
chunks handed to the :class:`~worm_fs.core.storer.ChunkStorer`, which hashes them and
queues their store to the committer) → :meth:`FileOps.flush` (each ``close``: a
:class:`Snapshot` of what is not stored yet, hashed by the caller, stored by one
committer job that shares its synced commit with other writers') →
:meth:`~worm_fs.core.sealing.SealOps.release` (the seal).

Concurrency: a writer's state is guarded by ``writer.guard``, held only to copy bytes
and move chunks between ``buffers`` and ``pending``; a flush waits for its commit
without it, so writes of other files never wait, and reads of sealed files take no
lock. A flush stores ``clean`` (recovery may seal the file) only if nothing was written
after its snapshot; a write after a snapshot is acknowledged only once the store says
"not clean" again (a mark job queued after that flush's job).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worm_fs.audit.log import AuditBatch
from worm_fs.core.base import CoreState
from worm_fs.core.committer import Ticket
from worm_fs.core.handles import Handle, RangeLog, WriteHandle
from worm_fs.core.model import Caller, Inode, State
from worm_fs.core.policy import Op
from worm_fs.core.quota import QuotaExceeded
from worm_fs.core.storer import Chunk, ChunkStorer, retire_chunks, store_live_chunks
from worm_fs.core.throttle import OpenThrottle
from worm_fs.errors import Refused, WormError
from worm_fs.store import (
    WriteTxn,
    load_file_chunk,
    release_chunk,
)
from worm_fs.store.chunks import digest

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def wants_write(flags: int) -> bool:
    return bool(flags & _WRITE_FLAGS)


@dataclass
class Snapshot:
    """What one flush (or truncate) stores: taken under ``writer.guard``, hashed
    outside it, stored by a committer job, retired after the commit."""

    writer: WriteHandle
    chunks: list[Chunk]
    size: int
    mtime_ns: int
    generation: int
    #: The writer's ``flush_epoch`` after this snapshot.
    epoch: int
    writes: RangeLog
    #: A truncate also drops stored chunks from this index on.
    drop_from: int | None = None
    #: The storer failure this snapshot's chunks retry (cleared once they are stored).
    error: Exception | None = None
    nbytes: int = 0


#: A flush with at most this much to hash may be started on the event loop.
INLINE_FLUSH_BYTES = 256 << 10


@dataclass
class PendingFlush:
    """A queued flush: wait for ``ticket`` (it never needs a lock), then ``finish()``."""

    core: FileOps
    snap: Snapshot
    ticket: Ticket

    def finish(self) -> None:
        """Wait if needed, then retire the snapshot; raises the flush's error."""
        try:
            self.ticket.wait()
        except BaseException:
            self.core._snapshot_failed(self.snap)
            raise
        self.core._retire_snapshot(self.snap)


class FileOps(CoreState):
    """The data half of :class:`~worm_fs.core.fs.WormCore`."""

    _storer: ChunkStorer
    _throttle: OpenThrottle

    # ------------------------------------------------------------------ open / read
    def open(self, ino: int, flags: int, caller: Caller) -> tuple[int, Inode]:
        """A read handle; every write-access open of an existing name is refused.

        A uid over the open rate limit is refused with EAGAIN first, before anything
        is looked up; its refusals are recorded summed, about once a second
        (:mod:`worm_fs.core.throttle`)."""
        if not self._throttle.admit(caller, ino, flags):
            raise Refused(f"more than {self._throttle.rate:g} opens per second by uid "
                          f"{caller.uid}", errno=errno.EAGAIN)
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)
            op = Op.OPEN_WRITE if wants_write(flags) else Op.OPEN_READ
            facts = self._facts(rt, op, inode, caller)
        self.require_log()
        self._check(op, "open", inode, facts, caller, path, flags=flags)
        handle = Handle(fh=self._new_fh(), ino=ino, caller=caller, flags=flags,
                        size=None if inode.state is State.WRITING else inode.size)
        with self._lock:
            self._handles[handle.fh] = handle
        self.log.note(self.log.stamp(
            "open", path=path, ino=ino, flags=flags, **self._who(caller)
        ))
        return handle.fh, inode

    def note_throttled(self, fields: dict[str, Any]) -> None:
        """Note one ``open_throttled`` record (the throttle's callback)."""
        try:
            with self.store.read() as rt:
                fields = dict(fields, path=self._path(rt, fields["ino"]))
        except WormError:
            pass  # the file went away meanwhile: the record keeps its ino
        self.log.note(self.log.stamp("open_throttled", errno.EAGAIN, **fields))

    def flush_throttled(self, *, everything: bool = False) -> int:
        """Record the refusals of the open rate limit that are due (the daemon's group
        commit tick; ``everything`` at shutdown)."""
        return self._throttle.flush(everything=everything)

    # ------------------------------------------------------------------ write
    def write(self, fh: int, off: int, data: bytes) -> int:
        """Write through the writer handle (may block: see :meth:`write_buffered`)."""
        follow_up = self.write_buffered(fh, off, data)
        if follow_up is not None:
            follow_up()
        return len(data)

    def _load_chunk(self, ino: int, index: int) -> bytes | None:
        """A stored chunk for a partial write (most writes need none: no transaction)."""
        with self.store.read() as rt:
            return load_file_chunk(rt, ino, index)

    def _charge(self, writer: WriteHandle, nbytes: int) -> None:
        """Charge a writer's growth (or shrinking) to its quotas; under its guard. The
        first refusal of a writer is recorded, later ones (a loop retrying) are not."""
        try:
            self.quotas.charge(writer.quota_keys, nbytes=nbytes)
        except QuotaExceeded as exc:
            if writer.quota_refused:
                raise
            writer.quota_refused = True
            raise self._refuse("write", exc.errno, writer.caller, exc.message,
                               ino=writer.ino, bytes=nbytes) from None

    def _writer_of(self, fh: int) -> WriteHandle:
        handle = self._handle(fh)
        writer = self._writers.get(handle.ino)
        if writer is None or writer.fh != fh:
            raise WormError("handle is not writable", errno=errno.EBADF)
        return writer

    def write_buffered(self, fh: int, off: int, data: bytes) -> Callable[[], None] | None:
        """Copy ``data`` into the writer's chunk buffers; never waits for a commit.

        Returns the follow-up that may block, to run (off the event loop) before the
        write is acknowledged, or None: durably marking the file as changed since its
        last flush, and handing filled chunks to the storer when it has no free slot.
        """
        writer = self._writer_of(fh)
        self.require_writable("write", writer.caller, ino=writer.ino)
        with writer.guard:
            if writer.error is not None:
                raise writer.error
            growth = off + len(data) - writer.size
            if growth > 0:
                self._charge(writer, growth)
            # The store must say "not clean" before a write after a flush is
            # acknowledged, or a crash would seal the file without it.
            mark_epoch = None if writer.dirty_marked else writer.flush_epoch
            writer.durable_clean = False
            writer.write(off, data, lambda i: self._load_chunk(writer.ino, i))
            writer.mtime_ns = self.clock()
            handoff = writer.hand_off()
        while handoff and self._storer.try_submit(writer, *handoff[0]):
            handoff.pop(0)
        if mark_epoch is None and not handoff:
            return None

        def follow_up() -> None:
            try:
                if mark_epoch is not None:
                    self.commit(self._mark_not_clean_job(writer.ino))
                    with writer.guard:
                        if writer.flush_epoch == mark_epoch:  # no snapshot since
                            writer.dirty_marked = True
                while handoff:
                    self._storer.submit(writer, *handoff[0])
                    handoff.pop(0)
            except BaseException as exc:
                # The chunks not submitted stay in ``pending`` for the next flush to
                # store; they must not be counted as queued, or drain() would wait
                # forever, and the writer reports the failure from now on.
                with writer.guard:
                    writer.queued -= len(handoff)
                    if isinstance(exc, WormError) and writer.error is None:
                        writer.error = exc
                    writer.guard.notify_all()
                raise

        return follow_up

    @staticmethod
    def _mark_not_clean_job(ino: int) -> Callable[[WriteTxn, AuditBatch], None]:
        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            raw = tx.get_inode(ino)
            if raw is not None:
                inode = Inode.from_bytes(raw)
                if inode.clean:
                    inode.clean = False
                    tx.put_inode(ino, inode.to_bytes())
        return job

    # ------------------------------------------------------------------ flush
    def _to_flush(self, fh: int) -> WriteHandle | None:
        """The writer behind ``fh`` if it has written anything since its last flush."""
        handle = self._handles.get(fh)
        writer = self._writers.get(handle.ino) if handle is not None else None
        if writer is None or writer.fh != fh or writer.durable_clean:
            return None
        return writer

    def handle_file(self, fh: int) -> tuple[int, bool]:
        """The inode behind ``fh`` and whether ``fh`` is its writer (EBADF if unknown)."""
        handle = self._handle(fh)
        writer = self._writers.get(handle.ino)
        return handle.ino, writer is not None and writer.fh == fh

    def flush_is_noop(self, fh: int) -> bool:
        """Whether :meth:`flush` has nothing to make durable for ``fh``."""
        return self._to_flush(fh) is None

    def flush(self, fh: int) -> None:
        """Make everything written through ``fh`` durable (each ``close``); returns once
        the commit holding it is synced."""
        self._handle(fh)  # EBADF for an unknown handle
        writer = self._to_flush(fh)
        if writer is not None:
            self._flush_writer(writer)

    def fsync(self, fh: int) -> None:
        self.flush(fh)

    def _flush_writer(self, writer: WriteHandle) -> None:
        self.require_writable("flush", writer.caller, ino=writer.ino)
        with writer.flush_lock:  # queued in snapshot order (see WriteHandle.flush_lock)
            pending = self._submit_flush(self._snapshot(writer))
        pending.finish()

    def flush_start(self, fh: int) -> PendingFlush | None:
        """Start a small flush without blocking: snapshot, hash and queue it, for the
        caller to wait on ``ticket`` (without a thread) and then call ``finish()``.

        Returns None when :meth:`flush` must be used instead: nothing to flush, another
        flush of the file being queued, chunks still with the storer (the flush would
        wait for them), or more than :data:`INLINE_FLUSH_BYTES` to hash.
        """
        writer = self._to_flush(fh)
        if writer is None or not writer.flush_lock.acquire(blocking=False):
            return None
        try:
            with writer.guard:
                dirty = sum(len(b.data) for b in writer.buffers.values() if b.dirty)
                if writer.queued or dirty + sum(map(len, writer.pending.values())) > \
                        INLINE_FLUSH_BYTES:
                    return None
            self.require_writable("flush", writer.caller, ino=writer.ino)
            return self._submit_flush(self._snapshot(writer))
        finally:
            writer.flush_lock.release()

    def _submit_flush(self, snap: Snapshot) -> PendingFlush:
        writer = snap.writer

        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            inode = self._store_snapshot(tx, snap, clean=True)
            batch.add(self.log.stamp(
                "flush", path=self._path(tx, writer.ino), ino=writer.ino, size=inode.size,
                writes=snap.writes.summary(), **self._who(writer.caller),
            ))

        ticket = self.committer.submit(job, flushes=1, nbytes=snap.nbytes)
        return PendingFlush(self, snap, ticket)

    def _snapshot(self, writer: WriteHandle, *, truncate_to: int | None = None) -> Snapshot:
        """Take what is not stored yet (after the storer drained), then hash it outside
        the guard. ``truncate_to`` first cuts or extends the file (the writer's
        ``ftruncate``)."""
        with writer.guard:
            self._storer.drain(writer)
            drop_from = None
            if truncate_to is not None:
                if writer.error is not None:
                    raise writer.error
                if truncate_to != writer.size:
                    self._charge(writer, truncate_to - writer.size)
                with self.store.read() as rt:
                    drop_from = writer.truncate(
                        truncate_to, lambda i: load_file_chunk(rt, writer.ino, i))
                writer.durable_clean = False
            raw = writer.take_dirty()
            writes, writer.writes = writer.writes, RangeLog()
            writer.dirty_marked = False  # this flush may store "clean"
            writer.flush_epoch += 1
            snap = Snapshot(writer, [], writer.size, writer.mtime_ns, writer.generation,
                            writer.flush_epoch, writes, drop_from, error=writer.error)
        snap.chunks = [(index, data, digest(data)) for index, data in raw]
        snap.nbytes = sum(len(data) for _, data, _ in snap.chunks)
        for index, data, _ in snap.chunks:
            writer.feed_sha(index, data)
        return snap

    def _store_snapshot(self, tx: WriteTxn, snap: Snapshot, *, clean: bool) -> Inode:
        """Inside a job: store the snapshot's live chunks and the file's durable size;
        ``clean`` only if nothing was written after the snapshot."""
        writer = snap.writer
        store_live_chunks(tx, writer, snap.chunks)
        if snap.drop_from is not None:
            for index, key in list(tx.iter_manifest(writer.ino)):
                if index >= snap.drop_from:
                    tx.delete_manifest(writer.ino, index)
                    release_chunk(tx, key)
        with writer.guard:
            clean = clean and writer.generation == snap.generation
        inode = Inode.from_bytes(tx.get_inode(writer.ino) or b"")
        inode.size = snap.size
        inode.mtime_ns = snap.mtime_ns
        inode.clean = clean
        inode.changed_ns = self.clock()
        tx.put_inode(writer.ino, inode.to_bytes())
        return inode

    def _retire_snapshot(self, snap: Snapshot, *, marked_dirty: bool = False) -> None:
        """After the commit: drop stored chunks from ``pending``; a flush whose snapshot
        is still the latest state leaves the writer clean."""
        writer = snap.writer
        with writer.guard:
            retire_chunks(writer, snap.chunks)
            if writer.error is snap.error:  # not a failure of a chunk handed off since
                writer.error = None
            if marked_dirty:
                if writer.flush_epoch == snap.epoch:  # no flush since that may be clean
                    writer.dirty_marked = True  # the job stored clean=False
            elif writer.generation == snap.generation:
                writer.durable_clean = True

    def _snapshot_failed(self, snap: Snapshot) -> None:
        """The chunks stay pending for the next flush; so does the writes summary."""
        writer = snap.writer
        with writer.guard:
            if not writer.writes.calls:
                writer.writes = snap.writes
