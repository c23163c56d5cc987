"""The chunk storer: hashes and stores filled chunks of files being written, off the
request path, in batched transactions.

A writer hands a chunk over (:meth:`ChunkStorer.submit`) as soon as it is full and goes
on receiving data; a hasher thread digests it (XXH3-128 for the key, SHA-256 for the
file's running digest) and a committer thread puts it into LMDB and points the file's
manifest at it. Many chunks share one synced commit, and hashing overlaps the fsync.

Contract:

* Chunks of one file are stored in the order they were submitted, so a later version of
  a chunk always wins.
* Until committed, a chunk stays in ``writer.pending`` where reads find it.
* The storer never takes the core lock while it hashes or commits; it takes it briefly
  afterwards to retire what it stored and wake waiters (:meth:`ChunkStorer.drain`).
* A failed commit (full disk, I/O error) leaves the chunks pending and the error on the
  writer; the writer's next ``write``/``flush`` reports it and ``flush`` retries.
* At most :data:`MAX_IN_FLIGHT` chunks wait; ``submit`` blocks beyond that
  (back-pressure on the writer instead of unbounded memory).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from worm_fs.errors import WormError
from worm_fs.store import CHUNK_SIZE, Store, put_chunk, release_chunk
from worm_fs.store.chunks import digest

if TYPE_CHECKING:
    from worm_fs.core.handles import WriteHandle

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
#: Chunks stored per transaction at most (LMDB slows with hundreds of MiB dirty).
BATCH_CHUNKS = 16

Item = tuple["WriteHandle", int, "bytearray | memoryview"]
Hashed = tuple["WriteHandle", int, "bytearray | memoryview", bytes]


class ChunkStorer:
    """Two threads: a hasher (XXH3 keys, the files' running SHA-256) feeding a committer
    (LMDB puts and synced commits), so hashing the next chunks overlaps the fsync of the
    previous batch. Both keep submission order."""

    def __init__(
        self, store: Store, cond: threading.Condition,
        on_failure: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self._store = store
        self._on_failure = on_failure
        self._cond = cond  # shares the core's lock
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=MAX_IN_FLIGHT)
        self._hashed: queue.Queue[Hashed | None] = queue.Queue(maxsize=BATCH_CHUNKS)
        self._threads = [
            threading.Thread(target=self._hash, name="worm-fs-hasher", daemon=True),
            threading.Thread(target=self._commit, name="worm-fs-committer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, writer: WriteHandle, index: int, data: bytearray | memoryview) -> None:
        """Queue a chunk (already in ``writer.pending``); may block. Not under the core lock."""
        self._queue.put((writer, index, data))

    def try_submit(self, writer: WriteHandle, index: int, data: bytearray | memoryview) -> bool:
        """Queue a chunk if there is room right now; never blocks."""
        try:
            self._queue.put_nowait((writer, index, data))
        except queue.Full:
            return False
        return True

    def drain(self, writer: WriteHandle) -> None:
        """Wait until none of ``writer``'s chunks is queued. Call with the core lock held.

        Waits even after a failure, so nothing the storer still holds can land after
        what the caller stores next.
        """
        while writer.queued:
            self._cond.wait()

    def wake(self) -> None:
        """Wake drain() waiters after queued counts changed. Call with the core lock."""
        self._cond.notify_all()

    def close(self) -> None:
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    # ------------------------------------------------------------------ the threads
    def _hash(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._hashed.put(None)
                return
            writer, index, data = item
            writer.feed_sha(index, data)  # hashlib releases the GIL for large buffers
            self._hashed.put((writer, index, data, digest(data)))

    def _commit(self) -> None:
        while True:
            first = self._hashed.get()
            if first is None:
                return
            batch = [first]
            done = False
            while len(batch) < BATCH_CHUNKS:
                try:
                    item = self._hashed.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            self._store_batch(batch)
            if done:
                return

    def _store_batch(self, batch: list[Hashed]) -> None:
        error: WormError | None = None
        with self._cond:
            # A chunk replaced in ``pending`` by a newer version (a write into it after
            # it was handed off) is skipped: the newer one is stored after it, by this
            # thread or by the writer's flush, and must win.
            live = [item for item in batch if item[0].pending.get(item[1]) is item[2]]
        try:
            with self._store.write() as tx:
                for writer, index, data, chunk_digest in live:
                    key = put_chunk(tx, data, chunk_digest)
                    old = tx.get_manifest(writer.ino, index)
                    tx.put_manifest(writer.ino, index, key)
                    if old is not None:
                        release_chunk(tx, old)
        except WormError as exc:
            error = exc
        except Exception as exc:  # a bug: keep the daemon alive, fail the writer
            log.exception("chunk storer failed")
            error = WormError(f"storing chunks failed: {exc}")
        if error is not None:
            self._on_failure(error)
        else:
            # Looking up keys faults neighbouring (just written) pages of the map into
            # this process; drop them so resident memory does not grow with the file.
            try:
                self._store.release_mapped_pages()
                self._store.ensure_headroom()
            except OSError as exc:
                log.warning("store housekeeping after a batch failed: %s", exc)
        with self._cond:
            for writer, index, data, _ in batch:
                writer.queued -= 1
                if error is not None:
                    writer.error = error
                    writer.sha_broken()
                elif writer.pending.get(index) is data:
                    del writer.pending[index]
            self._cond.notify_all()


__all__ = ["CHUNK_SIZE", "ChunkStorer"]
