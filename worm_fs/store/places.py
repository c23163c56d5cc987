"""Where each chunk's bytes lie in LMDB's data file, so cold reads can ``pread`` them.

Why: the lmdb binding touches every page of a value before returning it, and the first
fault of a value makes the kernel read its whole read-ahead window around it (8 MiB on
our disks). A file written beside others has its chunks between theirs, so most of
what such a read brings in belongs to other files. Reading a chunk with ``pread`` at
its offset, from a descriptor marked ``POSIX_FADV_RANDOM``, reads exactly the chunk,
and ``POSIX_FADV_WILLNEED`` can fetch the next chunks of a sequential read ahead.

A *place* (``chunk_places`` database: chunk key -> u64 offset + u32 length) is recorded
only for a value LMDB keeps on its own overflow pages, and it is **exact**: it is taken
from the map right after the commit that stored the chunk (see :func:`locate`), written
by the next write transaction before anything else in it, and deleted with the chunk.
LMDB never moves a committed value it does not rewrite, and chunks are never rewritten.
A reader holding a read transaction in which the place exists therefore reads pages
LMDB cannot reuse while that transaction is open. Every read is still checked against
the chunk's digest by the caller, and a mismatch falls back to LMDB's own read.

Contract: :func:`locate` runs on the thread that just committed, before any other write
transaction begins (the store holds its write lock across both); :class:`ChunkFile`
may be used from any thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_PLACE = struct.Struct(">QI")
#: LMDB's page header (``PAGEHDRSZ``) and its overflow-page flag (``P_OVERFLOW``).
_PAGE_HEADER = 16
_P_OVERFLOW = 0x04
_HEADER = struct.Struct("<QHHI")  # pgno, pad, flags, number of overflow pages


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_address(view: memoryview) -> int:
    """The address of the first byte of ``view`` (read-only views included)."""
    buf = _PyBuffer()
    _get_buffer(view, ctypes.byref(buf), 0)  # PyBUF_SIMPLE
    try:
        return int(buf.buf or 0)
    finally:
        _release_buffer(ctypes.byref(buf))


def encode_place(offset: int, length: int) -> bytes:
    return _PLACE.pack(offset, length)


def decode_place(value: bytes) -> tuple[int, int] | None:
    """(offset, length), or None for a value that is not a place."""
    if len(value) != _PLACE.size:
        return None
    return _PLACE.unpack(value)


def place_of(view: memoryview, map_start: int, map_length: int, page_size: int
             ) -> tuple[int, int] | None:
    """The (offset, length) in the data file of a value read from the map as ``view``,
    or None unless it sits on its own overflow pages (values kept inside a leaf page
    share it with others and are not worth a place). The value's pages must be
    resident: the caller has just read it."""
    address = buffer_address(view)
    offset = address - map_start
    if not 0 <= offset - _PAGE_HEADER < map_length or (offset - _PAGE_HEADER) % page_size:
        return None
    pgno, _, flags, pages = _HEADER.unpack(ctypes.string_at(address - _PAGE_HEADER,
                                                           _HEADER.size))
    needed = -(-(len(view) + _PAGE_HEADER) // page_size)
    if pgno * page_size != offset - _PAGE_HEADER or flags != _P_OVERFLOW or pages != needed:
        return None
    return offset, len(view)


class ChunkFile:
    """A read-only descriptor of the data file for placed reads and read-ahead.

    Read-ahead runs on a thread of its own: ``POSIX_FADV_WILLNEED`` allocates the pages
    and submits their reads, and waits when the disk's queue is full, which must not
    happen on the event loop. Ranges queued together that lie within
    :data:`MERGE_GAP` of each other are asked for as one.
    """

    def __init__(self, data_file: Path) -> None:
        self._fd = os.open(data_file, os.O_RDONLY | os.O_CLOEXEC)
        # Its own read-ahead state: reads bring in what they ask for, nothing around it.
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        self._ahead: queue.Queue[list[tuple[int, int]] | None] = queue.Queue(AHEAD_QUEUE)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` (releases the GIL), or None if short or the
        read failed (the caller then reads through LMDB, which reports the error)."""
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            log.warning("read of the data file at %d failed: %s", offset, exc)
            return None
        return data if len(data) == length else None

    def read_resident(self, offset: int, length: int) -> bytearray | None:
        """``length`` bytes at ``offset`` if all of them are in the page cache (a
        ``RWF_NOWAIT`` read: never waits for the disk), else None."""
        buf = bytearray(length)
        try:
            n = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:  # EOPNOTSUPP on a file system without it: the slow path
            log.debug("RWF_NOWAIT read of the data file failed: %s", exc)
            return None
        return buf if n == length else None

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Have the read-ahead thread read ``ranges`` ((offset, length), ascending in
        the order a reader wants them) into the page cache; returns at once."""
        if not ranges or self._fd < 0:
            return
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._read_ahead, daemon=True,
                                                    name="worm-fs-read-ahead")
                    self._thread.start()
        try:
            self._ahead.put_nowait(ranges)
        except queue.Full:  # the disk is behind anyway; a hint dropped costs nothing
            pass

    def _read_ahead(self) -> None:
        while (ranges := self._ahead.get()) is not None:
            for offset, length in merged(ranges):
                try:
                    os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)
                except OSError as exc:  # only a hint; EBADF once closed
                    log.debug("read-ahead of the data file failed: %s", exc)

    def close(self) -> None:
        if self._thread is not None:
            self._ahead.put(None)
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # stuck in the kernel: keep its descriptor
                log.warning("the read-ahead thread did not stop; its descriptor stays open")
                return
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: Read-ahead requests queued at most; more are dropped (the disk is behind anyway).
AHEAD_QUEUE = 64
#: Ranges closer than this are read ahead as one (the page headers and padding between
#: neighbouring chunks, or a small value between them, cost less than another request).
MERGE_GAP = 64 << 10


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` with each run of neighbours (the next starting at most
    :data:`MERGE_GAP` after the end of the one before) joined into one range."""
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        if out:
            start, size = out[-1]
            if 0 <= offset - (start + size) <= MERGE_GAP:
                out[-1] = (start, offset + length - start)
                continue
        out.append((offset, length))
    return out
