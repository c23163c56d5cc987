"""How a writer's bytes reach the daemon, on a real mount.

A file created write-only (``cp``, ``tar``, ``open(..., "wb")``) is written with direct
I/O: its bytes go to the daemon without a copy in the kernel's page cache, and the
kernel asks no ``security.capability`` xattr before each write. A file created
read-write keeps the page cache, so a shared writable ``mmap`` (``numpy.memmap``) works.
Readers see every write either way."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import re
from collections import Counter

import numpy as np
import pytest

from tests.conftest import Mount, wait_sealed

MiB = 1 << 20
LIBC = ctypes.CDLL(None, use_errno=True)
SYS_CACHESTAT = 451  # Linux 6.5+, x86-64 and arm64 alike


class CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def cached_pages(fd: int) -> int:
    """Pages of the file open as ``fd`` in the page cache (``cachestat``: it opens and
    reads nothing, so the kernel's cache is left as it is)."""
    whole, stat = CachestatRange(0, 0), Cachestat()
    if LIBC.syscall(SYS_CACHESTAT, fd, ctypes.byref(whole), ctypes.byref(stat), 0) != 0:
        raise OSError(ctypes.get_errno(), "cachestat")
    return stat.nr_cache


def test_a_write_only_file_is_written_around_the_page_cache(mnt: Mount) -> None:
    data = os.urandom(4 * MiB)
    pages = {}
    for name, access in (("direct.bin", os.O_WRONLY), ("cached.bin", os.O_RDWR)):
        fd = os.open(mnt.path / name, access | os.O_CREAT, 0o644)  # cp, tar: O_WRONLY
        try:
            os.write(fd, data)
            pages[name] = cached_pages(fd)
        finally:
            os.close(fd)
        wait_sealed(mnt.path / name)
    assert pages == {"direct.bin": 0, "cached.bin": 4 * MiB // mmap.PAGESIZE}
    for name in pages:
        assert (mnt.path / name).read_bytes() == data
        assert os.getxattr(mnt.path / name, "user.worm.sha256").decode() == \
            hashlib.sha256(data).hexdigest()


def test_a_memmap_of_a_new_file_writes_into_the_mount(mnt: Mount) -> None:
    path = mnt.path / "array.npy"
    values = np.arange(MiB // 4, dtype=np.float32)
    array = np.memmap(path, dtype=np.float32, mode="w+", shape=values.shape)  # O_RDWR
    array[:] = values
    array.flush()
    del array
    wait_sealed(path)
    assert (np.fromfile(path, dtype=np.float32) == values).all()
    assert os.getxattr(path, "user.worm.sha256").decode() == \
        hashlib.sha256(values.tobytes()).hexdigest()


def test_a_reader_of_a_file_being_written_sees_its_overwrites(mnt: Mount) -> None:
    path = mnt.path / "growing.bin"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(writer, b"A" * 8192)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 4, 0) == b"AAAA"  # now in the reader's page cache
        os.pwrite(writer, b"B" * 4096, 0)  # direct I/O, around that cache
        assert os.pread(reader, 4, 0) == b"BBBB"
        os.write(writer, b"C" * 100)
        assert os.pread(reader, 200, 8192 - 100) == b"A" * 100 + b"C" * 100
        os.close(writer)
        wait_sealed(path)
        assert os.pread(reader, 4, 0) == b"BBBB"
    finally:
        os.close(reader)
    assert path.read_bytes() == b"B" * 4096 + b"A" * 4096 + b"C" * 100


def test_the_first_open_after_the_seal_drops_what_a_reader_cached_while_it_was_written(
        mnt: Mount) -> None:
    """On kernels that do not drop cached pages on a direct write, a reader's cache of
    a file being written could go stale; a sealed file's cache is kept across opens,
    so the first open after its seal starts it afresh (later opens keep it)."""
    path = mnt.path / "read-while-written.bin"
    data = os.urandom(MiB)
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(writer, data)
    with open(path, "rb") as reader:
        assert reader.read() == data
        assert cached_pages(reader.fileno()) == MiB // mmap.PAGESIZE
    os.close(writer)
    wait_sealed(path)
    with open(path, "rb") as first:
        assert cached_pages(first.fileno()) == 0
        assert first.read() == data
    with open(path, "rb") as later:
        assert cached_pages(later.fileno()) == MiB // mmap.PAGESIZE


def fuse_requests(log_text: str, *, not_of: int) -> Counter[str]:
    """FUSE requests by opcode in a ``--debug-fuse`` daemon log, but those for inode
    ``not_of``."""
    return Counter(op for op, node in re.findall(r"opcode: ([A-Z_]+) \(\d+\), nodeid: (\d+)",
                                                  log_text) if int(node) != not_of)


def test_a_file_written_and_closed_asks_no_attributes_and_reads_sealed_after(
    mount_factory,
) -> None:
    """The attributes of a file being written stay cached while its writer holds it, so
    the kernel's permission check after the create and Python's ``fstat`` in ``open()``
    send no GETATTR; its writer's close drops them, and ``stat`` after the seal shows
    the read-only mode (also for a file closed without a write, whose attributes no
    write made the kernel drop)."""
    m = mount_factory("--settle", "0", "--debug-fuse")
    os.listdir(m.path)
    before = m.log.read_text(errors="replace")
    for n in range(10):
        with open(m.path / f"f{n}", "wb") as f:
            f.write(b"x" * 4096)
    # The directory's attributes are asked after each create (it changed); not the
    # new files'.
    during = fuse_requests(m.log.read_text(errors="replace")[len(before):],
                           not_of=os.stat(m.path).st_ino)
    assert during["WRITE"] == 10
    assert during["GETATTR"] == 0, during  # 2 per file when they were not cached
    for n in range(10):
        wait_sealed(m.path / f"f{n}")
        assert os.stat(m.path / f"f{n}").st_mode & 0o777 == 0o444
    empty = m.path / "empty"
    with open(empty, "wb"):
        pass
    wait_sealed(empty)
    assert os.stat(empty).st_mode & 0o777 == 0o444
    with pytest.raises(PermissionError) as refused:
        os.open(empty, os.O_WRONLY)
    assert refused.value.errno == errno.EPERM
