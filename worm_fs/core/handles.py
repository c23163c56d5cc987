"""Open file handles: what a reader has read, and a writer's unstored chunks.

A :class:`WriteHandle` holds at most a few chunks of the file in memory (the ones being
written); everything else is in the store. It never holds a whole file, so files far
larger than RAM can be written. These classes do no I/O themselves: where stored bytes
are needed they call the ``load`` function the core passes in.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worm_fs.core.model import Caller
from worm_fs.store import CHUNK_SIZE

#: ``load(index)`` returns the stored bytes of chunk ``index`` (possibly shorter than a
#: chunk), or None for a hole.
Loader = Callable[[int], bytes | None]

#: Chunks a writer keeps in memory before older ones are stored and dropped.
MAX_BUFFERED_CHUNKS = 8
#: Ranges kept per handle in read/write summaries before they are counted as "more".
MAX_RANGES = 32


@dataclass
class RangeLog:
    """Count, bytes and coalesced byte ranges of reads or writes through a handle."""

    calls: int = 0
    nbytes: int = 0
    ranges: list[list[int]] = field(default_factory=list)
    more_ranges: int = 0

    def add(self, off: int, length: int) -> None:
        self.calls += 1
        self.nbytes += length
        if length == 0:
            return
        if self.ranges and self.ranges[-1][1] == off:
            self.ranges[-1][1] = off + length
        elif len(self.ranges) < MAX_RANGES:
            self.ranges.append([off, off + length])
        else:
            self.more_ranges += 1

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"calls": self.calls, "bytes": self.nbytes, "ranges": self.ranges}
        if self.more_ranges:
            out["more_ranges"] = self.more_ranges
        return out


@dataclass
class Handle:
    """An open file: who opened it and what they read."""

    fh: int
    ino: int
    caller: Caller
    flags: int
    reads: RangeLog = field(default_factory=RangeLog)
    #: Size of an immutable file (None while it is being written).
    size: int | None = None
    #: (key, bytes) of the last chunk this handle verified, so sequential reads of one
    #: chunk hash and copy it once. Replaced as a whole, never mutated.
    cache: tuple[bytes, bytes | bytearray] = (b"", b"")
    #: A sealed file's chunk keys, once its layout was checked (the first read).
    keys: list[bytes] | None = None
    #: The chunk the handle last loaded, and the end of what it asked the disk to
    #: read ahead (hints only: concurrent readers of one handle may race on them).
    last_index: int = -1
    ahead_to: int = 0
    #: A sealed file's chunk places by index, read with its layout (``core/reads.py``).
    places: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Guards ``reads`` against concurrent readers of one handle.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class ChunkBuffer:
    #: A bytearray while being filled; a read-only view when a write covered it whole.
    data: bytearray | memoryview
    dirty: bool = True


@dataclass
class WriteHandle(Handle):
    """The single writable handle of a file, from ``create`` to the seal.

    Chunks move from ``buffers`` (being written, in memory) to ``pending`` (handed to
    the storer or taken by a flush, not yet committed; never modified again) to the
    store. ``load`` functions passed in must look in ``pending`` before the store (see
    :meth:`stored_or_pending`).

    Every field below ``guard`` is guarded by it (the running digest has its own lock).
    ``guard`` is a condition: :meth:`ChunkStorer.drain` waits on it for ``queued`` to
    reach zero. Nothing waits for a commit while holding it; the only hashing under it
    is the digest check of a stored chunk loaded for a partial write, a truncate or a
    read of the file being written.
    """

    guard: threading.Condition = field(default_factory=threading.Condition, repr=False)
    size: int = 0
    mtime_ns: int = 0
    buffers: dict[int, ChunkBuffer] = field(default_factory=dict)
    pending: dict[int, bytearray | memoryview] = field(default_factory=dict)
    #: Chunks submitted to the storer and not yet committed or failed.
    queued: int = 0
    #: The storer's last failure: the next write reports it; a flush stores the chunks
    #: again and clears it if that succeeds.
    error: Exception | None = None
    #: True while nothing has been written since the last flush (nothing to flush).
    durable_clean: bool = False
    #: True while the stored inode says not ``clean`` (a new file, or marked after the
    #: first write that followed a flush); a crash then quarantines the file. Cleared
    #: when a flush takes its snapshot, because that flush may store ``clean``.
    dirty_marked: bool = True
    #: Changes so far (writes and truncates): a flush stores ``clean`` only if none
    #: happened after its snapshot.
    generation: int = 0
    #: Flush snapshots taken so far: a not-clean mark queued before the latest one
    #: does not count as marking (the flush may have stored ``clean`` after it).
    flush_epoch: int = 0
    writes: RangeLog = field(default_factory=RangeLog)
    #: SHA-256 over chunks [0, sha_next), fed in order as full chunks are stored;
    #: None once a chunk that may already be in it changed (the seal then re-reads).
    sha: Any = field(default_factory=hashlib.sha256)
    sha_next: int = 0
    sha_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Held from a flush's (or truncate's) snapshot until its job is queued, so the jobs
    #: of one writer reach the committer in snapshot order and an older snapshot never
    #: overwrites the size a newer one stored. Not held while waiting for the commit.
    flush_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The quotas its size is charged to (its creator's uid, the trees above it).
    quota_keys: list[tuple[str, int]] = field(default_factory=list)
    #: A write past a quota was recorded already (the next ones are refused quietly).
    quota_refused: bool = False

    def feed_sha(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Extend the running digest if ``data`` is the next full chunk (storer thread)."""
        with self.sha_lock:
            if self.sha is not None and index == self.sha_next and len(data) == CHUNK_SIZE:
                self.sha.update(data)
                self.sha_next += 1

    def sha_broken(self) -> None:
        with self.sha_lock:
            self.sha = None

    def _touching(self, index: int) -> None:
        """A chunk that may already be digested is about to change."""
        with self.sha_lock:
            if index < self.sha_next or index in self.pending:
                self.sha = None

    def stored_or_pending(
        self, index: int, load: Loader
    ) -> bytes | bytearray | memoryview | None:
        pending = self.pending.get(index)
        return pending if pending is not None else load(index)

    def buffer(self, index: int, load: Loader) -> ChunkBuffer:
        buf = self.buffers.get(index)
        if buf is None:
            stored = self.stored_or_pending(index, load)
            if stored is not None:
                self._touching(index)
            buf = ChunkBuffer(bytearray(stored or b""), dirty=False)
            self.buffers[index] = buf
        return buf

    def write(self, off: int, data: bytes, load: Loader) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            index, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, len(view) - pos)
            if coff == 0 and n == CHUNK_SIZE and index not in self.buffers:
                # A whole chunk: keep a view of the request's bytes, no copy. It is handed
                # to the storer at once and never modified in place.
                if self.stored_or_pending(index, load) is not None:
                    self._touching(index)
                self.buffers[index] = ChunkBuffer(view[pos : pos + n])
                pos += n
                continue
            buf = self.buffer(index, load)
            if not isinstance(buf.data, bytearray):
                buf.data = bytearray(buf.data)
            if len(buf.data) < coff:
                buf.data.extend(bytes(coff - len(buf.data)))
            buf.data[coff : coff + n] = view[pos : pos + n]
            buf.dirty = True
            pos += n
        self.size = max(self.size, off + len(data))
        self.writes.add(off, len(data))
        self.generation += 1

    def truncate(self, new_size: int, load: Loader) -> int:
        """Cut or extend to ``new_size``; returns the first chunk index wholly past it.

        Call with nothing queued (after the storer drained). Chunks past the end leave
        ``buffers`` and ``pending`` (so no later flush stores them again); the caller
        drops stored chunks from the returned index on.
        """
        last = (new_size + CHUNK_SIZE - 1) // CHUNK_SIZE  # first index past the end
        for i in [i for i in self.buffers if i >= last]:
            del self.buffers[i]
        for i in [i for i in self.pending if i >= last]:
            del self.pending[i]
        if new_size < self.size:
            tail = new_size % CHUNK_SIZE
            if tail:
                buf = self.buffer(new_size // CHUNK_SIZE, load)
                if not isinstance(buf.data, bytearray):
                    buf.data = bytearray(buf.data)
                if len(buf.data) > tail:
                    del buf.data[tail:]
                    buf.dirty = True
            if new_size < self.sha_next * CHUNK_SIZE:
                self.sha_broken()
        self.size = new_size
        self.generation += 1
        return last

    def hand_off(self) -> list[tuple[int, bytearray | memoryview]]:
        """Move full chunks, and the oldest beyond the memory budget, to ``pending``.

        Returns the dirty ones, in index order, for the caller to submit to the storer.
        """
        out: list[tuple[int, bytearray | memoryview]] = []
        for index in sorted(dict.fromkeys(self.full_dirty() + self.excess())):
            buf = self.buffers.pop(index)
            if buf.dirty:
                self.pending[index] = buf.data
                self.queued += 1
                out.append((index, buf.data))
        return out

    def take_dirty(self) -> list[tuple[int, bytearray | memoryview]]:
        """Move every dirty buffer to ``pending``; returns all pending chunks in index
        order (for a flush, after the storer drained: those it failed on, and these)."""
        for index in [i for i, buf in self.buffers.items() if buf.dirty]:
            self.pending[index] = self.buffers.pop(index).data
        return sorted(self.pending.items())

    def read(self, off: int, size: int, load: Loader) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        out = bytearray()
        pos = off
        while pos < end:
            index, coff = divmod(pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, end - pos)
            buf = self.buffers.get(index)
            data = buf.data if buf is not None else (self.stored_or_pending(index, load) or b"")
            piece = data[coff : coff + n]
            out += piece
            if len(piece) < n:
                out += bytes(n - len(piece))
            pos += n
        return bytes(out)

    def full_dirty(self) -> list[int]:
        return [i for i, b in self.buffers.items() if b.dirty and len(b.data) == CHUNK_SIZE]

    def excess(self) -> list[int]:
        """Oldest buffered chunks beyond the memory budget."""
        extra = len(self.buffers) - MAX_BUFFERED_CHUNKS
        return list(self.buffers)[:extra] if extra > 0 else []
