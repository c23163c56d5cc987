"""What the core stores about each entry, and who is asking.

An :class:`Inode` is encoded as compact JSON in the ``inodes`` database. Times are
nanoseconds since the epoch. ``changed_ns`` drives the settle window: it is the last
time the entry itself changed (a directory: also when a name was added to or removed
from it); changes further below are found by :mod:`worm_fs.core.settle`.
"""

from __future__ import annotations

import json
import stat
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


class State(StrEnum):
    """The life of a regular file. Directories and symlinks are always ``sealed``."""

    WRITING = "writing"
    SEALED = "sealed"
    QUARANTINED = "quarantined"


@dataclass
class Inode:
    ino: int
    kind: Kind
    mode: int  # permission bits only (no file type bits)
    uid: int
    gid: int
    parent: int
    name: bytes
    state: State = State.SEALED
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    changed_ns: int = 0
    #: When the entry was created (0: stored before this was recorded). The settle
    #: window closes at ``born_ns + --settle-limit`` whatever happens later.
    born_ns: int = 0
    sealed_ns: int = 0
    sha256: str = ""
    #: A sealed file's layout digest (see :mod:`worm_fs.core.layout`); "" otherwise.
    layout: str = ""
    target: bytes = b""
    #: True when the file's durable bytes cover every write acknowledged so far, i.e.
    #: its last flush came after its last write. Recovery seals only clean files.
    clean: bool = False
    #: A directory's number of subdirectories, kept by every change that adds or removes
    #: one (its link count is 2 plus this); 0 for files and symlinks. Stores made before
    #: it was kept are counted once at start-up (``subdirs_counted``).
    subdirs: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def st_mode(self) -> int:
        kind_bits = {
            Kind.FILE: stat.S_IFREG,
            Kind.DIR: stat.S_IFDIR,
            Kind.SYMLINK: stat.S_IFLNK,
        }[self.kind]
        return kind_bits | self.mode

    def st_nlink(self) -> int:
        """A directory: its own name, its ``.`` and each subdirectory's ``..``."""
        return 2 + self.subdirs if self.kind is Kind.DIR else 1

    def to_bytes(self) -> bytes:
        # A shallow dict: dataclasses.asdict deep-copies ``extra`` and costs more than
        # the LMDB commit it is part of.
        d = {name: getattr(self, name) for name in _INODE_FIELDS}
        d["name"] = self.name.decode("utf-8", "surrogateescape")
        d["target"] = self.target.decode("utf-8", "surrogateescape")
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Inode:
        d = json.loads(raw)
        d["kind"] = Kind(d["kind"])
        d["state"] = State(d["state"])
        d["name"] = d["name"].encode("utf-8", "surrogateescape")
        d["target"] = d["target"].encode("utf-8", "surrogateescape")
        return cls(**d)


_INODE_FIELDS = tuple(f.name for f in fields(Inode))


@dataclass(frozen=True)
class Caller:
    """The process behind a request, as the kernel reports it."""

    uid: int
    gid: int
    pid: int
    comm: str = ""
    #: Supplementary groups (control channel only; FUSE requests do not carry them).
    groups: frozenset[int] = frozenset()
    #: The process's command line (read for ``create`` only, for seal receipts).
    cmdline: tuple[str, ...] = ()

    @classmethod
    def daemon(cls) -> Caller:
        import os

        return cls(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), comm="worm-fs")


@dataclass(frozen=True)
class AttrChange:
    """A requested ``setattr``: each field is ``None`` when not being changed."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())
