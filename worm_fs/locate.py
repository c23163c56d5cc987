"""Finding a store from what a user types: a mountpoint, any path inside it, or a state
directory.

The daemon publishes its state directory and pid as xattrs on the mount root
(``user.worm.state_dir``, ``user.worm.pid``), so users never type internal paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worm_fs.errors import NotAStore, NotFound
from worm_fs.store import Store

FSTYPE = "fuse.worm-fs"


@dataclass(frozen=True)
class Location:
    state_dir: Path
    mountpoint: Path | None  # None for an unmounted store given by its state directory
    daemon_pid: int | None = None


def mount_root(path: Path) -> Path | None:
    """The worm-fs mountpoint containing ``path``, or None."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                mounts[fields[1].replace("\\040", " ")] = fields[2]
    current = path.resolve() if path.exists() else path.absolute()
    while True:
        if mounts.get(str(current)) == FSTYPE:
            return current
        if current.parent == current:
            return None
        current = current.parent


def locate(path: str | os.PathLike[str], *, allow_state_dir: bool = True) -> Location:
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise NotFound(f"{p}: no such file or directory")
    root = mount_root(p if p.is_dir() else p.parent)
    if root is not None:
        try:
            state_dir = Path(os.getxattr(root, "user.worm.state_dir").decode())
            pid = int(os.getxattr(root, "user.worm.pid").decode())
        except OSError as exc:
            raise NotAStore(
                f"{root}: the worm-fs daemon does not answer ({exc.strerror})"
            ) from None
        return Location(state_dir=state_dir, mountpoint=root, daemon_pid=pid)
    if allow_state_dir and p.is_dir() and Store.exists(p):
        return Location(state_dir=p.resolve(), mountpoint=None)
    raise NotAStore(f"{p} is not inside a worm-fs mount" + (
        " nor a worm-fs state directory" if allow_state_dir else ""
    ))


def open_store(location: Location, *, write: bool = False) -> Store:
    """Open the store next to a running daemon (needs access to the state directory).

    Read-only unless ``write``; LMDB serialises writers across processes.
    """
    if not os.access(location.state_dir, os.R_OK | os.X_OK):
        raise NotAStore(f"{location.state_dir}: permission denied (the state directory is "
                        "readable by its owner only; run as root)")
    return Store(location.state_dir, readonly=not write)
