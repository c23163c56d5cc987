"""Names and times shared by the core, the deletion procedure, the scrub and the CLI."""

from __future__ import annotations

import time

from worm_fs.core.model import Inode
from worm_fs.store import ReadTxn

ROOT_INO = 1
NAME_MAX = 255
#: Parent links followed at most when building a path (a loop would be corruption).
MAX_DEPTH = 4096


def path_of(txn: ReadTxn, ino: int) -> str:
    """The path of ``ino`` below the mount root, built from parent links."""
    parts: list[bytes] = []
    for _ in range(MAX_DEPTH):
        if ino == ROOT_INO:
            break
        raw = txn.get_inode(ino)
        if raw is None:
            break
        inode = Inode.from_bytes(raw)
        parts.append(inode.name)
        ino = inode.parent
    return "/" + b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")


def iso_time(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
