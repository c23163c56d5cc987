"""What POSIX callers and ordinary tools expect of the mount beyond the write-once
rules."""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount, run_cli, wait_sealed

LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


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
