"""The chunk storer: hashes filled chunks of files being written and hands them to the
committer, off the request path.

A writer hands a chunk over (:meth:`ChunkStorer.submit`) as soon as it is full and goes
on receiving data; the hasher thread digests it (XXH3-128 for the key, SHA-256 for the
file's running digest) and queues a job that stores it to the
:class:`~worm_fs.core.committer.Committer`, where it shares a synced commit with
whatever else is queued. Hashing the next chunks overlaps the commit of the previous.

Contract:

* Chunks of one file reach the committer in the order they were submitted. A version
  is stored only if it is still the writer's pending version of its index when its job
  runs (:func:`store_live_chunks`), so a newer version always wins, whichever of two
  hand-offs was submitted first.
* Until committed, a chunk stays in ``writer.pending`` where reads find it.
* ``writer.queued`` counts chunks submitted and not yet committed or failed; it is
  changed under ``writer.guard``, which :meth:`ChunkStorer.drain` waits on.
* A failed commit (full disk, I/O error) leaves the chunks pending and the error on the
  writer; the writer's next ``write`` reports it, and a ``flush`` stores them again.
* At most :data:`MAX_IN_FLIGHT` chunks are between ``submit`` and their commit;
  ``submit`` blocks beyond that (back-pressure on the writers, not unbounded memory).
* Before :meth:`start` (core unit tests, recovery) a chunk is hashed and stored inline
  on the submitting thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from worm_fs.audit.log import AuditBatch
from worm_fs.core.committer import Committer
from worm_fs.errors import WormError
from worm_fs.store import CHUNK_SIZE, WriteTxn, put_chunk, release_chunk
from worm_fs.store.chunks import digest

if TYPE_CHECKING:
    from worm_fs.core.handles import WriteHandle

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32

Chunk = tuple[int, "bytearray | memoryview", bytes]  # index, data, XXH3 digest


def store_live_chunks(tx: WriteTxn, writer: WriteHandle, chunks: list[Chunk]) -> int:
    """Store those of ``chunks`` that are still ``writer``'s pending versions and point
    its manifest at them (inside a job). Returns how many were stored."""
    with writer.guard:
        live = [c for c in chunks if writer.pending.get(c[0]) is c[1]]
    for index, data, chunk_digest in live:
        key = put_chunk(tx, data, chunk_digest)
        old = tx.get_manifest(writer.ino, index)
        tx.put_manifest(writer.ino, index, key)
        if old is not None:  # also when old == key: put_chunk took a second reference
            release_chunk(tx, old)
    return len(live)


def retire_chunks(writer: WriteHandle, chunks: list[Chunk]) -> None:
    """After the commit that stored ``chunks``: drop them from ``pending`` (unless a
    newer version replaced them). Call with ``writer.guard`` held."""
    for index, data, _ in chunks:
        if writer.pending.get(index) is data:
            del writer.pending[index]


class ChunkStorer:
    """One hasher thread feeding the committer; see the module docstring."""

    def __init__(self, committer: Committer) -> None:
        self._committer = committer
        self._queue: queue.SimpleQueue[tuple[WriteHandle, int, bytearray | memoryview] | None]
        self._queue = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._hash_loop, name="worm-fs-hasher",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Hand over everything submitted, then stop the hasher (the committer stores it)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=60)

    def submit(self, writer: WriteHandle, index: int, data: bytearray | memoryview) -> None:
        """Queue a chunk (already in ``writer.pending`` and counted in ``queued``); may
        block for a slot. Never call with a lock held."""
        self._slots.acquire()
        self._enqueue(writer, index, data)

    def try_submit(self, writer: WriteHandle, index: int, data: bytearray | memoryview) -> bool:
        """Queue a chunk if a slot is free right now; never blocks (threaded mode only)."""
        if self._thread is None or not self._slots.acquire(blocking=False):
            return False
        self._enqueue(writer, index, data)
        return True

    def drain(self, writer: WriteHandle) -> None:
        """Wait until none of ``writer``'s chunks is queued. Call with ``writer.guard``
        held (the wait releases it).

        Waits even after a failure, so nothing the storer still holds can land after
        what the caller stores next. While it waits, the committer does not hold chunk
        stores back for longer runs (:meth:`Committer.urgent`).
        """
        if not writer.queued:
            return
        with self._committer.urgent():
            while writer.queued:
                writer.guard.wait()

    # ------------------------------------------------------------------ the pipeline
    def _enqueue(self, writer: WriteHandle, index: int, data: bytearray | memoryview) -> None:
        if self._thread is None:
            self._hash_and_queue(writer, index, data)
        else:
            self._queue.put((writer, index, data))

    def _hash_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._hash_and_queue(*item)
            except Exception as exc:  # a bug: keep the thread (and every other writer) alive
                log.exception("chunk storer failed")
                self._done(item[0], [], WormError(f"hashing a chunk failed: {exc}"))

    def _hash_and_queue(self, writer: WriteHandle, index: int, data: bytearray | memoryview
                        ) -> None:
        writer.feed_sha(index, data)  # hashlib releases the GIL for large buffers
        chunks: list[Chunk] = [(index, data, digest(data))]

        def job(tx: WriteTxn, batch: AuditBatch) -> int:
            return store_live_chunks(tx, writer, chunks)

        self._committer.submit(job, nbytes=len(data), group=writer.ino,
                               on_done=lambda error: self._done(writer, chunks, error))

    def _done(self, writer: WriteHandle, chunks: list[Chunk], error: BaseException | None
              ) -> None:
        """A submitted chunk's outcome: retire it, or leave it pending with the error."""
        with writer.guard:
            writer.queued -= 1
            if error is not None:
                writer.error = error
                writer.sha_broken()
            else:
                retire_chunks(writer, chunks)
            writer.guard.notify_all()
        self._slots.release()


__all__ = ["CHUNK_SIZE", "ChunkStorer", "retire_chunks", "store_live_chunks"]
