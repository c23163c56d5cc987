"""The settle window: whether an entry may still be renamed or have its times and mode set.

An entry is *unsettled* while it, or for a directory anything below it, changed less
than ``settle`` seconds ago; a file being written is always unsettled. Which operations
the window allows is decided in :mod:`worm_fs.core.policy`; this module only computes it.

A change updates the entry itself (and its parent directory's times when a name is
added or removed), never every ancestor: "anything below changed" is found by walking
the directory's subtree here, when a rule needs it (a rename, chmod or utimes of a
directory by its creator), instead of on every write. The walk stops at the first
recent change. A subtree larger than :data:`MAX_WALK` entries counts as settled (the
conservative answer: the rename is refused).
"""

from __future__ import annotations

from collections.abc import Callable

from worm_fs.core.model import Inode, Kind, State
from worm_fs.store import ReadTxn

#: Entries visited at most when deciding whether a directory's subtree is unsettled.
MAX_WALK = 100_000


def recently_changed(inode: Inode, now_ns: int, settle_ns: int) -> bool:
    if inode.kind is Kind.FILE and inode.state is State.WRITING:
        return True
    return now_ns - inode.changed_ns < settle_ns


def is_unsettled(
    txn: ReadTxn, inode: Inode, now_ns: int, settle_ns: int,
    load: Callable[[ReadTxn, int], Inode], children: Callable[[ReadTxn, int], list[int]],
) -> bool:
    """Whether ``inode`` is inside its settle window (see the module docstring).

    ``load(txn, ino)`` and ``children(txn, ino)`` see entries as the core does
    (including files created but not yet stored).
    """
    if settle_ns <= 0:
        return False
    if recently_changed(inode, now_ns, settle_ns):
        return True
    if inode.kind is not Kind.DIR:
        return False
    todo = [inode.ino]
    seen = 0
    while todo:
        for child in children(txn, todo.pop()):
            seen += 1
            if seen > MAX_WALK:
                return False
            node = load(txn, child)
            if recently_changed(node, now_ns, settle_ns):
                return True
            if node.kind is Kind.DIR:
                todo.append(node.ino)
    return False
