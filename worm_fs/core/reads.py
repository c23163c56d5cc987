"""Reading files: sealed files straight from the store, others through their writer.

Two ways in:

* :meth:`ReadOps.read` may wait for the disk and runs in a worker thread. It checks a
  sealed file's layout at its first read, and reads chunks at their recorded places in
  the data file (``store/places.py``; a file's places are read with its layout, in
  file order), asking the disk for the next
  :data:`READ_AHEAD_CHUNKS` chunks of a sequential read.
* :meth:`ReadOps.read_resident` never waits for the disk, so the event loop calls it
  first: a cold sequential read then costs one thread hop per miss, not per request.
  It serves a sealed file's chunks that are already in the page cache (a
  ``RWF_NOWAIT`` read at a place the open transaction still records) and answers
  None for anything else, which ``read`` then serves.

Concurrency: reads of sealed and quarantined files (immutable) take no lock; a handle's
``cache``, ``last_index`` and ``ahead_to`` are each replaced whole, so
concurrent readers of one handle at worst repeat a read or a read-ahead. A file still
being written is read under its writer's guard, from its buffers and the store.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from worm_fs.core.base import CoreState
from worm_fs.core.handles import Handle
from worm_fs.core.layout import check_layout, check_length, chunk_length
from worm_fs.core.model import Kind, State
from worm_fs.errors import Corruption, UntrustedData, WormError
from worm_fs.store import CHUNK_SIZE, ReadTxn, check_chunk, load_file_chunk
from worm_fs.store.chunks import read_chunk
from worm_fs.store.keys import matches_key

#: Chunks a sequential read of a sealed file asks the disk for ahead of the one it reads.
READ_AHEAD_CHUNKS = 16

Chunk = bytes | bytearray

log = logging.getLogger(__name__)


class ReadOps(CoreState):
    """The read half of :class:`~worm_fs.core.fs.WormCore`."""

    def read(self, fh: int, off: int, size: int) -> Chunk:
        """Read through a handle (may wait for the disk: not on the event loop)."""
        handle = self._handle(fh)
        try:
            writer = self._writers.get(handle.ino)
            with self.store.read() as rt:
                if writer is not None:
                    with writer.guard:
                        data = writer.read(
                            off, size, lambda i: load_file_chunk(rt, handle.ino, i))
                else:
                    data = self._read_chunks(rt, handle, off, size)
        except UntrustedData as exc:  # refused bytes from outside: the store is fine
            self._report_corruption(handle, str(exc))
            raise
        except Corruption as exc:
            self._report_corruption(handle, str(exc))
            self.enter_failsafe(f"corrupt data detected: {exc}")
            raise
        self._note_read(handle, fh, off, len(data))
        return data

    def read_resident(self, fh: int, off: int, size: int) -> Chunk | None:
        """What :meth:`read` would return, if it needs no disk read and no check that
        only :meth:`read` makes (a layout not checked yet, a mismatch, a deletion):
        else None, having at most replaced the handle's cached chunk and read-ahead
        state (hints). Never waits for the disk, raises nothing a read would not."""
        handle = self._handles.get(fh)
        if (handle is None or not handle.keys or self.chunk_source is not None
                or self.audit_reads_each or handle.size is None):
            return None
        with self.store.read() as rt:
            data = _gather(off, min(off + size, handle.size),
                           lambda index: self._resident_chunk(rt, handle, index))
        if data is not None:
            self._note_read(handle, fh, off, len(data))
        return data

    def _note_read(self, handle: Handle, fh: int, off: int, nbytes: int) -> None:
        with handle.lock:
            handle.reads.add(off, nbytes)
        if self.audit_reads_each:
            self.log.note(self.log.stamp(
                "read", ino=handle.ino, offset=off, bytes=nbytes, fh=fh,
                **self._who(handle.caller),
            ))

    def _read_chunks(self, rt: ReadTxn, handle: Handle, off: int, size: int) -> Chunk:
        if handle.keys is None:
            self._check_layout(rt, handle)
        assert handle.size is not None
        data = _gather(off, min(off + size, handle.size),
                       lambda index: self._chunk(rt, handle, index))
        assert data is not None  # _chunk answers every index
        return data

    def _chunk(self, rt: ReadTxn, handle: Handle, index: int) -> Chunk:
        """Chunk ``index`` through ``handle``, verified (b"" for a hole of a file not
        sealed yet); raises ESTALE if the file was deleted under the handle."""
        keys = handle.keys
        key = keys[index] if keys else rt.get_manifest(handle.ino, index)
        cached_key, cached_data = handle.cache
        if key is None:
            if rt.get_inode(handle.ino) is None:  # deleted under an open handle
                raise WormError("the file was deleted", errno=errno.ESTALE)
            return b""
        if key == cached_key:
            return cached_data
        if self.chunk_source is None:
            found = self._stored_chunk(rt, handle, index, key) if keys else \
                read_chunk(rt, key)
        else:
            found = self.chunk_source.chunk(handle.ino, index, key)
            found = None if found is None else check_chunk(key, found)
        if found is None and rt.get_inode(handle.ino) is None:
            raise WormError("the file was deleted", errno=errno.ESTALE)
        data = check_chunk(key, None) if found is None else found  # None raises
        if keys:
            check_length(handle.size, index, data)
        handle.cache = (key, data)  # one assignment: safe for concurrent readers
        return data

    def _stored_chunk(self, rt: ReadTxn, handle: Handle, index: int, key: bytes
                      ) -> Chunk | None:
        """Chunk ``index`` of a sealed file, verified, read at its place when it has
        one (None: not stored)."""
        self._read_ahead(rt, handle, index)
        place = handle.places.get(index)
        if place is not None:
            data = rt.read_file_chunk_at(handle.ino, index, place)
            if data is not None and matches_key(key, data):
                return data
            if data is not None:  # its chunk place is the same: read LMDB's own copy
                log.warning("chunk %s was not at its recorded place", key.hex())
                found = rt.get_chunk_from_map(key)
                return None if found is None else check_chunk(key, found)
        return read_chunk(rt, key)  # at its chunk place if it has one, else the map

    def _resident_chunk(self, rt: ReadTxn, handle: Handle, index: int) -> Chunk | None:
        """Chunk ``index`` of a sealed file if it is cached by the handle or in the page
        cache at its place, verified and of the right length; else None."""
        assert handle.keys is not None and handle.size is not None
        key = handle.keys[index]
        cached_key, cached_data = handle.cache
        if key == cached_key:
            return cached_data
        place = handle.places.get(index)
        if place is None:
            return None
        data = rt.read_file_chunk_at(handle.ino, index, place, resident_only=True)
        if (data is None or len(data) != chunk_length(handle.size, index)
                or not matches_key(key, data)):
            return None
        handle.cache = (key, data)
        self._read_ahead(rt, handle, index)
        return data

    @staticmethod
    def _read_ahead(rt: ReadTxn, handle: Handle, index: int) -> None:
        """A read of chunk ``index`` that follows the handle's previous chunk (or starts
        the file) asks the disk for the chunks up to :data:`READ_AHEAD_CHUNKS` ahead
        whose places are known, each once, when fewer than half of those are asked for
        already: in batches, so that neighbouring chunks become one request. Placed
        chunks are read with nothing around them, so this is the only read-ahead a cold
        sequential read of the store gets."""
        previous, handle.last_index = handle.last_index, index
        if index != previous + 1:  # a seek: what was asked for ahead is elsewhere
            handle.ahead_to = index + 1
            if index != 0:
                return
        if handle.ahead_to - index > READ_AHEAD_CHUNKS // 2:
            return  # still far enough ahead
        first = max(index + 1, handle.ahead_to)
        last = index + 1 + READ_AHEAD_CHUNKS
        if first < last:
            rt.prefetch([handle.places.get(i) for i in range(first, last)])
            handle.ahead_to = last

    def _check_layout(self, rt: ReadTxn, handle: Handle) -> None:
        """Before the first read of a sealed file through ``handle``: its layout must be
        canonical and match its digest (raises Corruption). A file not sealed yet
        (quarantined, or its seal not committed) is read as stored, holes as zeros."""
        inode = self.inode_in(rt, handle.ino)
        if inode.kind is Kind.FILE and inode.state is State.SEALED:
            keys = check_layout(inode.size, rt.iter_manifest(handle.ino), inode.layout)
            handle.places = rt.file_places(handle.ino)
            handle.size = inode.size
            handle.keys = keys
            return
        if handle.size is None:
            handle.size = inode.size
        if inode.state is State.QUARANTINED:
            handle.keys = []  # final, with no layout: not looked up again on each read

    def _report_corruption(self, handle: Handle, what: str) -> None:
        with self.store.read() as rt:
            path = self._path(rt, handle.ino)
        self.log.note(self.log.stamp(
            "corruption", errno.EIO, path=path, ino=handle.ino, detail=what,
            **self._who(handle.caller),
        ))


def _gather(off: int, end: int, chunk_at: Callable[[int], Chunk | None]) -> Chunk | None:
    """Bytes ``off`` to ``end`` of a file whose chunk ``index`` is ``chunk_at(index)``
    (a short chunk reads as zeros after its end: a hole of a file not sealed yet);
    None as soon as ``chunk_at`` answers None."""
    pieces: list[Chunk] = []
    pos = off
    while pos < end:
        index, coff = divmod(pos, CHUNK_SIZE)
        n = min(CHUNK_SIZE - coff, end - pos)
        data = chunk_at(index)
        if data is None:
            return None
        piece = data if coff == 0 and n == len(data) else data[coff : coff + n]
        pieces.append(piece)
        if len(piece) < n:
            pieces.append(bytes(n - len(piece)))
        pos += n
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
