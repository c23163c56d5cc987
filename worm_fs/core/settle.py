"""The settle window: whether an entry may still be renamed or have its times and mode set.

Which operations the window allows is decided in :mod:`worm_fs.core.policy` (only for
the entry's creator); this module computes whether the window is open. It is open when
all of these hold:

1. ``--settle`` is not 0;
2. the entry was created less than ``--settle-limit`` seconds ago: activity can keep a
   window open at most that long after the entry's creation (``born_ns``; an entry
   stored without one counts as created long ago);
3. neither the entry, an ancestor nor, for a directory, anything below it is under
   legal hold;
4. for a directory: everything below it was created by the directory's creator, so
   what one user does can never keep another user's entries movable (an entry's
   ``uid`` is its creator: a real change of owner is refused);
5. the entry, or for a directory anything below it, changed less than ``--settle``
   seconds ago (``changed_ns``), or it is a file still being written.

A change updates the entry itself (and its parent directory when a name is added or
removed), never every ancestor: what is below a directory is found by :func:`survey`,
which walks the subtree when a rule needs it (a rename, chmod or utimes of a directory
by its creator). A subtree larger than :data:`MAX_WALK` entries closes the window (the
conservative answer: the operation is refused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import MAX_DEPTH, ROOT_INO
from worm_fs.errors import NotFound
from worm_fs.store import ReadTxn

#: Entries visited at most when surveying a directory's subtree.
MAX_WALK = 100_000

Load = Callable[[ReadTxn, int], Inode]
Children = Callable[[ReadTxn, int], list[int]]


@dataclass(frozen=True)
class Window:
    settle_ns: int
    #: How long after an entry's creation its window may stay open at most.
    limit_ns: int


@dataclass(frozen=True)
class Survey:
    """What is above and below an entry, as one snapshot saw it."""

    #: Why the window is closed whatever the times say ("" if nothing closes it).
    closed: str = ""
    #: Something below changed within the settle window (or is being written).
    recent_below: bool = False
    #: The directories walked (the entry's own included), for re-checking a snapshot.
    dirs: frozenset[int] = frozenset()


def recently_changed(inode: Inode, now_ns: int, settle_ns: int) -> bool:
    if inode.kind is Kind.FILE and inode.state is State.WRITING:
        return True
    return now_ns - inode.changed_ns < settle_ns


def held(inode: Inode) -> bool:
    return bool(inode.extra.get("hold"))


def survey(txn: ReadTxn, inode: Inode, now_ns: int, window: Window, load: Load,
           children: Children) -> Survey:
    """Look at ``inode``'s ancestors (holds) and, for a directory, its whole subtree
    (holds, creators, recent changes). ``load(txn, ino)`` and ``children(txn, ino)``
    see entries as the core does (including files created but not yet stored)."""
    ino = inode.parent
    for _ in range(MAX_DEPTH + 1 if inode.ino != ROOT_INO else 0):
        above = load(txn, ino)
        if held(above):
            return Survey(closed="a directory above it is under legal hold")
        if ino == ROOT_INO:
            break
        ino = above.parent
    if inode.kind is not Kind.DIR:
        return Survey()
    recent = False
    dirs = {inode.ino}
    todo = [inode.ino]
    seen = 0
    while todo:
        for child in children(txn, todo.pop()):
            seen += 1
            if seen > MAX_WALK:
                return Survey(closed=f"it holds more than {MAX_WALK} entries")
            try:
                node = load(txn, child)
            except NotFound:  # deleted since the snapshot's names were listed
                continue
            if node.uid != inode.uid:
                return Survey(closed="it holds entries created by another user")
            if held(node):
                return Survey(closed="an entry below it is under legal hold")
            recent = recent or recently_changed(node, now_ns, window.settle_ns)
            if node.kind is Kind.DIR:
                dirs.add(node.ino)
                todo.append(node.ino)
    return Survey(recent_below=recent, dirs=frozenset(dirs))


def closed_itself(inode: Inode, now_ns: int, window: Window) -> str:
    """Why the entry's own facts close its window ("" if they do not): then no survey
    is needed."""
    if window.settle_ns <= 0:
        return "the settle window is off (--settle 0)"
    if held(inode):
        return "it is under legal hold"
    if now_ns - inode.born_ns >= window.limit_ns:
        return f"it was created more than {window.limit_ns / 1e9:g} s ago (--settle-limit)"
    return ""


def window_open(inode: Inode, below: Survey, now_ns: int, window: Window) -> tuple[bool, str]:
    """Whether ``inode``'s window is open, given a :func:`survey`; else why not."""
    closed = closed_itself(inode, now_ns, window)
    if closed:
        return False, closed
    if below.closed:
        return False, below.closed
    if recently_changed(inode, now_ns, window.settle_ns) or below.recent_below:
        return True, ""
    return False, (f"it is settled: nothing in it changed for {window.settle_ns / 1e9:g} s"
                   if inode.kind is Kind.DIR else
                   f"it is settled: unchanged for {window.settle_ns / 1e9:g} s")
