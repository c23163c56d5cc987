"""``--replicate sync``: a ``close()`` that returns once what it made durable is in the
bucket.

The FUSE adapter awaits :meth:`SyncBarrier.uploaded` after the local commit of a
writer's flush (each ``close``) and of any ``fsync``. It returns once

1. every chunk in the file's committed manifest has left the upload queue,
2. if the file is sealed, its layout object has left it too, and
3. the audit log in the bucket covers every record committed before the call: a
   checkpoint at least that large is signed (concurrent callers share one) and
   uploaded (the uploader puts the log only after the chunks and layouts queued before
   it, so the records never name objects the bucket lacks).

The seal itself happens at the release that follows the last ``close``, which the
kernel sends after ``close()`` has returned: a ``close()`` cannot wait for it. An
``fsync`` through another handle (``sync FILE`` after the writer's ``close()``) first
gives a file still being written :data:`SEAL_WAIT_SECONDS` to be sealed, then waits
for the seal's objects as well.

Concurrency: callers run on the trio thread and hold no thread while they wait. One
poller task (:meth:`run`, in the daemon's nursery) checks every waiting call in one
short read transaction per interval, in a worker thread. A bucket that is away makes
callers wait, which is this mode's point; the poller logs once a minute how many wait.
At shutdown (:meth:`close`, before the FUSE loop is told to stop, which waits for every
handler) the calls still waiting fail with ``EIO``: their bytes are durable here, but the
bucket did not confirm them, and ``close()`` must not say it did. A cancelled wait
raises ``trio.Cancelled`` and changes nothing.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from worm_fs.core.model import Inode, State
from worm_fs.errors import WormError
from worm_fs.replication.uploader import LOG_UPLOADED
from worm_fs.store import ReadTxn, Store, uploads

log = logging.getLogger(__name__)

#: Seconds between two checks of the queue while calls wait.
POLL_SECONDS = 0.02
#: Seconds between two warnings about calls still waiting.
WARN_SECONDS = 60.0
#: How long an fsync through a reader's handle waits for a file still being written to
#: be sealed (the kernel sends the writer's release after its close() has returned).
SEAL_WAIT_SECONDS = 2.0


@dataclass
class _Waiter:
    ino: int
    names: set[bytes]
    log_size: int
    since: float
    done: trio.Event = field(default_factory=trio.Event)
    #: Set when the wait ended without the bucket's confirmation (shutdown).
    failed: bool = False


class SyncBarrier:
    """Holds flushes until the bucket has their objects and records (see module doc)."""

    def __init__(self, store: Store, sign_checkpoint: Callable[[], int],
                 wake_uploader: Callable[[], None], *,
                 on_unconfirmed: Callable[[int], None] = lambda ino: None) -> None:
        """``sign_checkpoint`` signs the current tree head inside a commit and returns
        its size (it blocks; it is called in a thread); ``wake_uploader`` ends the
        uploader's idle wait; ``on_unconfirmed(ino)`` records each call failed at
        shutdown (on the trio thread)."""
        self._store = store
        self._sign_checkpoint = sign_checkpoint
        self._wake_uploader = wake_uploader
        self._on_unconfirmed = on_unconfirmed
        self._waiters: list[_Waiter] = []
        self._have_waiters = trio.Event()
        self._signed_size = 0
        self._sign_lock = trio.Lock()
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def uploaded(self, ino: int, *, writer: bool = True) -> None:
        """Return once inode ``ino``'s committed objects and every record committed so
        far are in the bucket (may wait as long as the bucket is away). Called through
        another handle than the writer's (``writer`` False), first wait up to
        :data:`SEAL_WAIT_SECONDS` for a file still being written to be sealed."""
        if not writer:
            deadline = trio.current_time() + SEAL_WAIT_SECONDS
            while self._writing(ino) and trio.current_time() < deadline:
                await trio.sleep(POLL_SECONDS)
        names, log_size = await trio.to_thread.run_sync(self._wanted, ino)
        await self._signed_up_to(log_size)
        waiter = _Waiter(ino, set(names), log_size, trio.current_time())
        if self._closed:
            waiter.failed = True
            self._on_unconfirmed(ino)
        else:
            self._waiters.append(waiter)
            self._have_waiters.set()
            self._wake_uploader()
            try:
                await waiter.done.wait()
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if waiter.failed:
            raise WormError("unmounting before the bucket confirmed this file's upload "
                            "(--replicate sync); its bytes are durable here and stay "
                            "queued", errno=errno.EIO)

    def close(self) -> None:
        """Shutdown: fail every waiting call and any later one (trio thread)."""
        self._closed = True
        for waiter in self._waiters:
            waiter.failed = True
            waiter.done.set()
            self._on_unconfirmed(waiter.ino)
        self._waiters.clear()

    def _writing(self, ino: int) -> bool:
        """Whether ``ino`` is still being written (one inode read: quick enough for the
        trio thread)."""
        with self._store.read() as rt:
            raw = rt.get_inode(ino)
        return raw is not None and Inode.from_bytes(raw).state is State.WRITING

    def _wanted(self, ino: int) -> tuple[list[bytes], int]:
        """The names of ``ino``'s objects still queued, and the log size to cover."""
        with self._store.read() as rt:
            names = [uploads.chunk_name(key) for _, key in rt.iter_manifest(ino)]
            raw = rt.get_inode(ino)
            layout = Inode.from_bytes(raw).layout if raw is not None else ""
            if layout:
                names.append(uploads.file_name(ino, layout))
            return [n for n in names if rt.upload_queued(n)], rt.get_counter("audit_next_seq")

    async def _signed_up_to(self, size: int) -> None:
        """Make sure a checkpoint of at least ``size`` records is signed (and queued for
        the bucket); callers arriving while one is signed share the next one."""
        if self._signed_size >= size:
            return
        async with self._sign_lock:
            if self._signed_size < size:
                signed = await trio.to_thread.run_sync(self._sign_checkpoint)
                self._signed_size = max(self._signed_size, signed)

    # ------------------------------------------------------------------ the poller
    async def run(self) -> None:
        """Check the waiting calls every :data:`POLL_SECONDS` (runs until cancelled)."""
        last_warning = trio.current_time()
        while True:
            await self._have_waiters.wait()
            waiters = list(self._waiters)
            if not waiters:
                self._have_waiters = trio.Event()
                continue
            try:
                done = await trio.to_thread.run_sync(self._check, waiters)
            except Exception:  # noqa: BLE001 - the poller must outlive a bad check
                log.exception("sync barrier: checking the upload queue failed; retrying")
                await trio.sleep(1.0)
                continue
            for waiter in done:
                waiter.done.set()
                if waiter in self._waiters:  # not cancelled while _check ran
                    self._waiters.remove(waiter)
            now = trio.current_time()
            if self._waiters and now - last_warning >= WARN_SECONDS:
                oldest = now - min(w.since for w in self._waiters)
                log.warning("%d close()/fsync() calls wait for the bucket (--replicate "
                            "sync), the oldest for %.0f s", len(self._waiters), oldest)
                last_warning = now
            if self._waiters:
                await trio.sleep(POLL_SECONDS)

    def _check(self, waiters: list[_Waiter]) -> list[_Waiter]:
        """The waiters whose objects and records are all uploaded (one read txn; only
        this thread touches their ``names`` while it runs)."""
        with self._store.read() as rt:
            log_uploaded = rt.get_counter(LOG_UPLOADED)
            return [w for w in waiters if self._settled(rt, w, log_uploaded)]

    @staticmethod
    def _settled(rt: ReadTxn, waiter: _Waiter, log_uploaded: int) -> bool:
        waiter.names = {n for n in waiter.names if rt.upload_queued(n)}
        return not waiter.names and log_uploaded >= waiter.log_size


__all__ = ["SyncBarrier"]
