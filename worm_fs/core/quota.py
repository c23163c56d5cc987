"""Quotas: bytes and files per uid and per directory tree.

Usage counts what users wrote: the logical size of every sealed, quarantined and
in-progress file, by its creator's uid and by every directory *tree* with a quota
above it. Deduplication saves disk, not quota: a file whose chunks another file shares
counts in full for each. Nothing leaves a quota except through an approved deletion.

Two views of the same numbers:

* **durable** (``meta``, ``quota/used/...``): sealed and quarantined files, updated in
  the same transaction as the seal, the quarantine or the deletion;
* **in memory** (:class:`Quotas`): the durable numbers plus every file being written,
  charged when it is created (one file) and as it grows (bytes). This is what is
  enforced: a ``create`` over a files limit and a ``write`` or extending ``ftruncate``
  over a bytes limit fail with ``EDQUOT``. At a start the in-memory view is the durable
  one (files left writing are sealed or quarantined by recovery first).

A tree is a directory with a quota (``quota/limit/tree/<ino>``); the trees a new entry
counts against are found by walking its ancestors (only while tree quotas exist). An
entry cannot be renamed into a different set of trees (``EXDEV``, as XFS does for
project quotas), so a file's trees never change while it exists.

Locking: ``Quotas._lock`` guards the in-memory limits and usage; it is held only for
dictionary work, never across I/O, and may be taken under a writer's guard.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import MAX_DEPTH, ROOT_INO
from worm_fs.errors import Refused
from worm_fs.store import ReadTxn, WriteTxn

#: ("uid", uid) or ("tree", directory inode)
Key = tuple[str, int]

LIMIT_PREFIX = "quota/limit/"
USED_PREFIX = "quota/used/"
#: Set in ``meta`` once the durable per-uid usage of an existing store was counted.
COUNTED_META = "quota/counted"


class QuotaExceeded(Refused):
    """Disk quota exceeded."""

    errno = errno.EDQUOT


@dataclass
class Usage:
    bytes: int = 0
    files: int = 0


@dataclass
class Limits:
    """None: no limit on that dimension."""

    bytes: int | None = None
    files: int | None = None

    def empty(self) -> bool:
        return self.bytes is None and self.files is None


def meta_name(prefix: str, key: Key) -> str:
    return f"{prefix}{key[0]}/{key[1]}"


def parse_name(prefix: str, name: str) -> Key:
    kind, _, number = name[len(prefix):].partition("/")
    return kind, int(number)


def describe(key: Key) -> str:
    return f"uid {key[1]}" if key[0] == "uid" else f"the tree of inode {key[1]}"


class Quotas:
    """Limits and in-memory usage; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.limits: dict[Key, Limits] = {}
        self.used: dict[Key, Usage] = {}
        #: Directories with a tree quota.
        self.trees: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ loading
    def load(self, txn: ReadTxn) -> None:
        """Read limits and durable usage (before serving)."""
        limits, used = read_quota_meta(txn)
        with self._lock:
            self.limits, self.used = limits, used
            self.trees = frozenset(k[1] for k in limits if k[0] == "tree")

    # ------------------------------------------------------------------ membership
    def keys_for(self, txn: ReadTxn, uid: int, parent: int,
                 load: Callable[[ReadTxn, int], Inode]) -> list[Key]:
        """What an entry created by ``uid`` in directory ``parent`` counts against."""
        return [("uid", uid)] + [("tree", t) for t in self.trees_of(txn, parent, load)]

    def trees_of(self, txn: ReadTxn, directory: int,
                 load: Callable[[ReadTxn, int], Inode]) -> tuple[int, ...]:
        """The quota trees ``directory`` is in (itself included), nearest first."""
        trees = self.trees
        if not trees:
            return ()
        found: list[int] = []
        ino = directory
        for _ in range(MAX_DEPTH + 1):
            if ino in trees:
                found.append(ino)
            if ino == ROOT_INO:
                break
            ino = load(txn, ino).parent
        return tuple(found)

    # ------------------------------------------------------------------ enforcing
    def charge(self, keys: Iterable[Key], nbytes: int = 0, files: int = 0) -> None:
        """Add usage; raises :class:`QuotaExceeded` (and adds nothing) if a positive
        change would pass a limit. Negative changes always apply."""
        keys = list(keys)
        with self._lock:
            for key in keys:
                limits = self.limits.get(key)
                if limits is None:
                    continue
                used = self.used.get(key, Usage())
                if nbytes > 0 and limits.bytes is not None and used.bytes + nbytes > limits.bytes:
                    raise QuotaExceeded(f"the bytes quota of {describe(key)} is exhausted "
                                        f"({used.bytes} of {limits.bytes} bytes used)")
                if files > 0 and limits.files is not None and used.files + files > limits.files:
                    raise QuotaExceeded(f"the files quota of {describe(key)} is exhausted "
                                        f"({used.files} of {limits.files} files)")
            for key in keys:
                used = self.used.setdefault(key, Usage())
                used.bytes += nbytes
                used.files += files

    def usage(self, key: Key) -> Usage:
        with self._lock:
            used = self.used.get(key, Usage())
            return Usage(used.bytes, used.files)

    def set_limits(self, key: Key, limits: Limits, used: Usage | None = None) -> None:
        """After the commit that stored them: new limits (and, for a new tree, its
        usage as counted in that transaction)."""
        with self._lock:
            if limits.empty():
                self.limits.pop(key, None)
            else:
                self.limits[key] = limits
            if used is not None:
                self.used[key] = used
            self.trees = frozenset(k[1] for k in self.limits if k[0] == "tree")

    def forget_tree(self, ino: int) -> None:
        with self._lock:
            self.limits.pop(("tree", ino), None)
            self.used.pop(("tree", ino), None)
            self.trees = self.trees - {ino}


# ---------------------------------------------------------------------- durable usage
def add_durable(tx: WriteTxn, keys: Iterable[Key], nbytes: int, files: int) -> None:
    """Inside a job: change the durable usage of ``keys``."""
    for key in keys:
        name = meta_name(USED_PREFIX, key)
        raw = tx.get_meta(name)
        used = Usage(**json.loads(raw)) if raw else Usage()
        used.bytes += nbytes
        used.files += files
        tx.put_meta(name, json.dumps(asdict(used)).encode())


def counted_usage(inode: Inode) -> Usage | None:
    """What a stored file counts in the durable usage (None: not a counted file)."""
    if inode.kind is Kind.FILE and inode.state in (State.SEALED, State.QUARANTINED):
        return Usage(inode.size, 1)
    return None


def stored_quotas(txn: ReadTxn) -> list[dict[str, object]]:
    """Durable usage (sealed and quarantined files) and limits of every uid and tree,
    as ``stats`` shows them (read next to a running daemon, which adds the files being
    written when it enforces)."""
    from worm_fs.core.paths import path_of

    limits, used = read_quota_meta(txn)
    return [quota_view(key, limits.get(key, Limits()), used.get(key, Usage()),
                       path_of(txn, key[1]) if key[0] == "tree" else None)
            for key in sorted(set(limits) | set(used))]


def quota_view(key: Key, limits: Limits, used: Usage, path: str | None) -> dict[str, object]:
    """One quota as ``quota show``, ``stats`` and ``--prometheus`` show it."""
    view: dict[str, object] = {"kind": key[0], "bytes_used": used.bytes,
                               "files_used": used.files, "bytes_limit": limits.bytes,
                               "files_limit": limits.files}
    view.update({"uid": key[1]} if key[0] == "uid" else {"path": path})
    return view


def read_quota_meta(txn: ReadTxn) -> tuple[dict[Key, Limits], dict[Key, Usage]]:
    """The stored limits and durable usage of every uid and tree."""
    limits = {parse_name(LIMIT_PREFIX, n): Limits(**json.loads(v))
              for n, v in txn.iter_meta(LIMIT_PREFIX)}
    used = {parse_name(USED_PREFIX, n): Usage(**json.loads(v))
            for n, v in txn.iter_meta(USED_PREFIX)}
    return limits, used
