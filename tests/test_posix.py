"""What POSIX callers and ordinary tools expect of the mount beyond the write-once rules:
``.`` and ``..`` in listings, directory link counts, ``renameat2`` flags, and argument
errors (``ENAMETOOLONG``, ``ENOTEMPTY``, ``EINVAL``) before policy refusals."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount, run_cli, wait_sealed

LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
LONG = "n" * 256


class Dirent(ctypes.Structure):
    """glibc's ``struct dirent`` on 64-bit Linux."""

    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


LIBC.opendir.restype = ctypes.c_void_p
LIBC.opendir.argtypes = [ctypes.c_char_p]
LIBC.readdir.restype = ctypes.POINTER(Dirent)
LIBC.readdir.argtypes = [ctypes.c_void_p]
LIBC.telldir.restype = ctypes.c_long
LIBC.telldir.argtypes = [ctypes.c_void_p]
LIBC.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
LIBC.closedir.argtypes = [ctypes.c_void_p]


def _read_rest(handle: int) -> list[tuple[bytes, int]]:
    out = []
    while entry := LIBC.readdir(handle):
        out.append((entry.contents.d_name, entry.contents.d_ino))
    return out


def raw_listing(path: Path) -> list[tuple[bytes, int]]:
    """Every entry readdir(3) returns, ``.`` and ``..`` included, with its ``d_ino``."""
    handle = LIBC.opendir(os.fsencode(path))
    assert handle, os.strerror(ctypes.get_errno())
    try:
        return _read_rest(handle)
    finally:
        LIBC.closedir(handle)


def renameat2(old: Path, new: Path, flags: int) -> int:
    """0, or the errno of renameat2(2)."""
    if LIBC.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def errno_of(fn: Callable, *args) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    raise AssertionError(f"{fn.__name__}{args} was not refused")


def records_after_stop(m: Mount) -> list[dict]:
    """The audit log, read from the state directory once the daemon has written all."""
    m.stop()
    out = run_cli("log", "show", str(m.state), "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def nlink(path: Path) -> int:
    return os.lstat(path).st_nlink


# ------------------------------------------------------------------------ renameat2 flags
def test_rename_whiteout_is_refused_with_einval_and_recorded(mnt: Mount) -> None:
    a = mnt.path / "a"
    a.write_bytes(b"a")
    wait_sealed(a)
    assert renameat2(a, mnt.path / "b", RENAME_WHITEOUT) == errno.EINVAL
    assert sorted(os.listdir(mnt.path)) == ["a"]  # no rename, no whiteout left behind
    # The other flags keep their meaning: NOREPLACE is what every rename does anyway.
    assert renameat2(a, mnt.path / "b", RENAME_NOREPLACE) == 0
    c = mnt.path / "c"
    c.write_bytes(b"c")
    assert renameat2(mnt.path / "b", c, RENAME_NOREPLACE) == errno.EEXIST
    assert renameat2(mnt.path / "b", c, RENAME_EXCHANGE) == errno.EEXIST
    assert ((mnt.path / "b").read_bytes(), c.read_bytes()) == (b"a", b"c")
    # (The kernel answers NOREPLACE onto an existing name itself: no request, no record.)
    refused = [r for r in records_after_stop(mnt) if r["op"] == "rename" and r["result"] != "ok"]
    assert [(r["result"], r["path"], r["new_path"], r["flags"]) for r in refused] == [
        ("EINVAL", "/a", "/b", RENAME_WHITEOUT),
        ("EEXIST", "/b", "/c", RENAME_EXCHANGE),
    ]


# ------------------------------------------------------------------------ . and ..
def test_readdir_lists_dot_and_dotdot_with_their_inode_numbers(mnt: Mount) -> None:
    d = mnt.path / "a" / "b"
    d.mkdir(parents=True)
    (d / "f").write_bytes(b"x")

    def ino(p: Path) -> int:
        return os.lstat(p).st_ino

    assert raw_listing(d) == [(b".", ino(d)), (b"..", ino(d.parent)), (b"f", ino(d / "f"))]
    root = raw_listing(mnt.path)
    assert root[:2] == [(b".", ino(mnt.path)), (b"..", ino(mnt.path))]  # root's .. is root
    assert [name for name, _ in root[2:]] == [b"a"]
    assert os.listdir(d) == ["f"]  # os.listdir and scandir skip them
    assert [e.name for e in os.scandir(mnt.path / "a")] == ["b"]
    ls = subprocess.run(["ls", "-a", str(d)], capture_output=True, text=True, check=True)
    assert ls.stdout.split() == [".", "..", "f"]


def test_a_large_directory_lists_every_entry_once_and_resumes_at_any_offset(
    mnt: Mount,
) -> None:
    """Replies cut at a batch boundary are covered in test_fuse_adapter.py (a kernel
    6.18 READDIRPLUS asks for up to a MiB at once: these 300 entries are one reply);
    here seekdir() makes the kernel ask again from an offset in the middle."""
    big = mnt.path / "big"
    big.mkdir()
    names = sorted(f"{i:03d}-" + "n" * 150 for i in range(300))
    for name in names:
        open(big / name, "wb").close()
    expected = [b".", b".."] + [n.encode() for n in names]
    assert [name for name, _ in raw_listing(big)] == expected
    assert sorted(os.listdir(big)) == names

    # seekdir() back to a telldir() position in the middle resumes at the same entry.
    handle = LIBC.opendir(os.fsencode(big))
    try:
        head = [LIBC.readdir(handle).contents.d_name for _ in range(100)]
        where = LIBC.telldir(handle)
        rest = _read_rest(handle)
        LIBC.seekdir(handle, where)
        assert _read_rest(handle) == rest
    finally:
        LIBC.closedir(handle)
    assert head + [name for name, _ in rest] == expected


def test_find_tar_rsync_and_rm_walk_a_tree_as_on_any_filesystem(
    mnt: Mount, tmp_path: Path
) -> None:
    tree = mnt.path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "empty").mkdir()
    files = {"top.txt": b"top", "a/mid.bin": os.urandom(5000), "a/b/leaf.json": b"{}"}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    os.symlink("a/mid.bin", tree / "link")
    for rel in files:
        wait_sealed(tree / rel)
    everything = sorted(["", "a", "a/b", "empty", "link", *files])

    def find(*args: str) -> list[str]:
        out = subprocess.run(["find", str(tree), *args], capture_output=True, text=True,
                             check=True).stdout
        return sorted(os.path.relpath(line, tree).removeprefix(".") for line in out.split())

    assert find() == everything
    assert find("-type", "d") == ["", "a", "a/b", "empty"]
    assert find("-mindepth", "1", "-maxdepth", "1") == ["a", "empty", "link", "top.txt"]

    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(mnt.path), "tree"], check=True)
    listed = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert sorted(p.rstrip("/").removeprefix("tree").removeprefix("/") for p in listed) == (
        everything)
    if shutil.which("rsync") is not None:
        subprocess.run(["rsync", "-a", f"{tree}/", f"{tmp_path / 'copy'}/"], check=True)
        for rel, data in files.items():
            assert (tmp_path / "copy" / rel).read_bytes() == data
        assert os.readlink(tmp_path / "copy" / "link") == "a/mid.bin"
        assert (tmp_path / "copy" / "empty").is_dir()

    rm = subprocess.run(["rm", "-rf", str(tree)], capture_output=True, text=True)
    assert rm.returncode != 0
    assert find() == everything  # nothing went


# ------------------------------------------------------------------------ link counts
def test_a_directory_links_count_its_subdirectories(mount_factory) -> None:
    m = mount_factory()
    root = m.path
    assert nlink(root) == 2
    (root / "a" / "x").mkdir(parents=True)
    (root / "a" / "y").mkdir()
    (root / "b").mkdir()
    (root / "a" / "f").write_bytes(b"f")
    os.symlink("f", root / "a" / "l")
    assert (nlink(root), nlink(root / "a"), nlink(root / "a" / "x"), nlink(root / "b")) == (
        4, 4, 2, 2)
    assert nlink(root / "a" / "f") == nlink(root / "a" / "l") == 1

    os.rename(root / "a" / "x", root / "b" / "x")  # a directory into another directory
    assert (nlink(root), nlink(root / "a"), nlink(root / "b")) == (4, 3, 3)
    os.rename(root / "b", root / "a" / "b")  # and a subtree one level down
    assert (nlink(root), nlink(root / "a"), nlink(root / "a" / "b")) == (3, 4, 3)
    os.rename(root / "a" / "f", root / "f")  # files do not count
    os.rename(root / "a" / "y", root / "a" / "z")  # within one directory: no change
    assert (nlink(root), nlink(root / "a")) == (3, 4)

    m.restart()
    assert (nlink(root), nlink(root / "a"), nlink(root / "a" / "b"), nlink(root / "f")) == (
        3, 4, 3, 1)


def test_a_store_made_before_link_counts_gets_them_counted(mount_factory) -> None:
    m = mount_factory()
    (m.path / "a" / "x").mkdir(parents=True)
    (m.path / "a" / "y").mkdir()
    (m.path / "a" / "f").write_bytes(b"f")
    m.stop()
    store = m.store(write=True)  # as an older version left it: no counts anywhere
    try:
        with store.read() as rt:
            inodes = list(rt.iter_inodes())
        with store.write() as tx:
            for ino, raw in inodes:
                fields = json.loads(raw)
                fields.pop("subdirs", None)
                tx.put_inode(ino, json.dumps(fields).encode())
            tx.raw_delete("meta", b"subdirs_counted")
    finally:
        store.close()
    m.start()
    assert (nlink(m.path), nlink(m.path / "a"), nlink(m.path / "a" / "x")) == (3, 4, 2)
    (m.path / "a" / "z").mkdir()
    assert nlink(m.path / "a") == 5


# ------------------------------------------------------------------------ argument errors
TOO_LONG_CALLS: dict[str, Callable[[Path], object]] = {
    "stat": lambda root: os.stat(root / LONG),
    "lstat": lambda root: os.lstat(root / LONG),
    "chmod": lambda root: os.chmod(root / LONG, 0o644),
    "chown": lambda root: os.chown(root / LONG, 0, 0),
    "utime": lambda root: os.utime(root / LONG, (0, 0)),
    "getxattr": lambda root: os.getxattr(root / LONG, "user.worm.state"),
    "open": lambda root: os.open(root / LONG, os.O_RDONLY),
    "create": lambda root: os.open(root / LONG, os.O_CREAT | os.O_WRONLY, 0o644),
    "mkdir": lambda root: os.mkdir(root / LONG),
    "symlink": lambda root: os.symlink("target", root / LONG),
    "mknod": lambda root: os.mknod(root / LONG, 0o600 | 0o010000),
    "mkfifo": lambda root: os.mkfifo(root / LONG),
    "link": lambda root: os.link(root / "f", root / LONG),
    "rename": lambda root: os.rename(root / "f", root / LONG),
    "unlink": lambda root: os.unlink(root / LONG),
    "rmdir": lambda root: os.rmdir(root / LONG),
}


@pytest.mark.parametrize("call", list(TOO_LONG_CALLS))
def test_a_name_longer_than_255_bytes_is_enametoolong_and_recorded(mnt: Mount,
                                                                    call: str) -> None:
    (mnt.path / "f").write_bytes(b"f")
    wait_sealed(mnt.path / "f")
    assert errno_of(TOO_LONG_CALLS[call], mnt.path) == errno.ENAMETOOLONG
    assert os.statvfs(mnt.path).f_namemax == 255
    fits = mnt.path / LONG[:255]  # the longest name that fits works
    fits.write_bytes(b"ok")
    assert fits.read_bytes() == b"ok"
    refused = [r for r in records_after_stop(mnt) if r["result"] == "ENAMETOOLONG"]
    assert len(refused) == 1 and refused[0]["path"] == "/" + LONG[:255]


def test_rmdir_of_a_non_empty_directory_is_enotempty_and_of_an_empty_one_eperm(
    settled_mnt: Mount,
) -> None:
    root = settled_mnt.path
    (root / "full" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "f").write_bytes(b"f")
    (root / "new").mkdir()
    with open(root / "new" / "being-written", "wb") as w:  # not stored yet
        w.write(b"w")
        assert errno_of(os.rmdir, root / "new") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, root / "full") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, root / "full" / "sub") == errno.EPERM
    assert errno_of(os.rmdir, root / "empty") == errno.EPERM
    assert errno_of(os.rmdir, root / "f") == errno.ENOTDIR
    assert sorted(os.listdir(root)) == ["empty", "f", "full", "new"]
    refused = [(r["result"], r["path"]) for r in records_after_stop(settled_mnt)
               if r["op"] == "rmdir"]
    assert refused == [("ENOTEMPTY", "/new"), ("ENOTEMPTY", "/full"), ("EPERM", "/full/sub"),
                       ("EPERM", "/empty")]
