"""The core's shared state, its locks, the commit hooks, failsafe and refusals.

The core is split by job (see :mod:`worm_fs.core`); every part works on the state
defined here. Who protects what (lock order: a writer's ``guard``, then the core lock;
nothing is awaited or committed under either):

==================  =====================================================  ==================
state               what it holds                                          guarded by
==================  =====================================================  ==================
``_handles``,       open handles; the single writer of each file being     core lock
``_writers``        written
``_unborn``,        files created but not yet stored (and their names)     core lock
``_unborn_names``
``_born``,          files stored by a recent commit, for lock-free         core lock
``_born_names``     readers whose snapshot predates it
``_claims``         names being created by a queued change (not yet        core lock
                    visible; a second create of the name is refused)
``_doomed``         directories a queued approval removes (no create       core lock
                    may start in them)
``_pending_seals``  seals decided at release, written by the next commit   core lock
``_next_ino``,      counters                                               core lock
``_next_fh``
``_renamed``,       per transaction: inodes renamed by it, names and       the committer
``_txn_claims``,    directories it claimed                                 (inside jobs only)
``_txn_doomed``
writer state        buffers, pending chunks, size, flush marks             ``writer.guard``
a writer's order    its flush and truncate jobs, queued in snapshot order  ``writer.flush_lock``
==================  =====================================================  ==================

Lock order: a writer's ``flush_lock``, its ``guard``, then the core lock; never the
other way round. Jobs and the committer never take a ``flush_lock``.

The core lock (a plain :class:`threading.Lock`: accidental nesting deadlocks at once
instead of hiding) is held only for dictionary and counter updates: never while
committing, syncing, hashing, reading chunks or waiting for a ticket. Lookups
(``lookup``, ``getattr``, ``readdir``, xattrs, ``statfs``) take no lock at all: they
open a short read transaction and read the dictionaries with single, atomic ``get``
calls or iterate copies.

Every change to the store is a job of the :class:`~worm_fs.core.committer.Committer`
(:meth:`CoreState.commit`). A caller waits for its job's commit only where the promise
needs it (a flush, a mkdir) and then applies its in-memory effects.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Protocol

from worm_fs.audit.log import AuditBatch, AuditLog
from worm_fs.core.committer import Committer, JobFn
from worm_fs.core.handles import Handle, WriteHandle
from worm_fs.core.layout import SealPlan
from worm_fs.core.model import Caller, Inode
from worm_fs.core.paths import NAME_MAX, ROOT_INO, path_of
from worm_fs.core.policy import (
    FAILSAFE_ERRNO,
    READ_ONLY_ERRNO,
    Facts,
    Op,
    decide,
    name_errno,
    needs_settle,
)
from worm_fs.core.quota import Quotas
from worm_fs.core.settle import Survey, Window, closed_itself, survey, window_open
from worm_fs.errors import Corruption, NotFound, Refused, StorageError, WormError
from worm_fs.store import ReadTxn, Store, WriteTxn, u64

log = logging.getLogger(__name__)
#: Counter of entries placed under another creator's directory (see ``placed``).
MIXED_ENTRIES = "mixed_entries"

#: A created file that no flush has stored yet is written by the group commit after this.
UNBORN_MAX_AGE_S = 1.0
#: How long a just-stored file stays visible to readers holding older snapshots.
BORN_GRACE_S = 10.0
#: Buffered records beyond which opens are refused until the log catches up.
MAX_PENDING_RECORDS = 100_000

_Name = tuple[int, bytes]


class ChunkSource(Protocol):
    """Chunks a store serves without holding them (a replica's). May block (network);
    called with a read transaction open, never with a lock held."""

    def chunk(self, ino: int, index: int, key: bytes) -> bytes:
        """Chunk ``index`` (key ``key``) of sealed file ``ino``, checked against what
        the signed log pins; :class:`~worm_fs.errors.UntrustedData` if it cannot be."""
        ...


class CoreState:
    """State, commit hooks and helpers shared by the parts of :class:`WormCore`."""

    def __init__(
        self,
        store: Store,
        log: AuditLog,
        *,
        settle_s: float = 60.0,
        settle_limit_s: float = 86_400.0,
        audit_reads_each: bool = False,
        retention_days: float = 0.0,
        seal_read_mode: int = 0,
        seal_gid: int | None = None,
        clock: Any = time.time_ns,
    ) -> None:
        self.store = store
        self.log = log
        self.settle_ns = int(settle_s * 1e9)
        self.window = Window(self.settle_ns, int(settle_limit_s * 1e9))
        self.audit_reads_each = audit_reads_each
        self.clock = clock
        self.retention_ns = int(retention_days * 86_400 * 1e9)
        #: The store's read policy (``--seal-read-mode``, ``--seal-group``): read bits
        #: every sealed file (and, with search bits, every new directory) gets, and the
        #: group they then belong to.
        self.seal_read_mode = seal_read_mode
        self.seal_gid = seal_gid
        self._lock = threading.Lock()
        self.quotas = Quotas()
        self.committer = Committer(store, log, self, on_failure=self._storage_failed)
        self._handles: dict[int, Handle] = {}
        self._writers: dict[int, WriteHandle] = {}
        #: ino -> (inode, create record, monotonic creation time), in creation order.
        self._unborn: dict[int, tuple[Inode, dict[str, Any], float]] = {}
        self._unborn_names: dict[_Name, int] = {}
        self._born: dict[int, tuple[Inode, float]] = {}
        self._born_names: dict[_Name, int] = {}
        self._claims: set[_Name] = set()
        #: Directories an approval in the running transaction removes: no create in them.
        self._doomed: set[int] = set()
        self._txn_doomed: list[int] = []
        self._pending_seals: list[SealPlan] = []
        self._renamed: set[int] = set()
        self._txn_claims: list[_Name] = []
        self._next_ino: int | None = None
        self._next_fh = 1
        self.audit_failing = False
        #: Why the store stopped accepting changes (None while healthy).
        self.failsafe: str | None = None
        #: What this mount is when it changes nothing at all (a replica), else None:
        #: every change is refused (policy.READ_ONLY_ERRNO), reads go on.
        self.read_only: str | None = None
        #: Where chunks come from when the store does not hold them (a replica's cache
        #: and bucket); None on a primary, which holds every chunk it serves.
        self.chunk_source: ChunkSource | None = None
        self.root_xattrs: dict[bytes, bytes] = {}

    # ------------------------------------------------------------------ commits
    def commit(self, fn: JobFn, *, flushes: int = 0, nbytes: int = 0) -> Any:
        """Run ``fn(tx, batch)`` in the next group commit and wait until it is durable.

        Never call with the core lock or a writer's guard held.
        """
        return self.committer.run(fn, flushes=flushes, nbytes=nbytes)

    def before_jobs(self, tx: WriteTxn, batch: AuditBatch) -> tuple[list[int], int]:
        """Commit hook: store deferred creates and seals before the transaction's jobs."""
        self._renamed.clear()
        with self._lock:
            unborn = list(self._unborn.items())
            seals = list(self._pending_seals)
        for ino, (inode, record, _) in unborn:
            tx.put_inode(ino, inode.to_bytes())
            tx.put_dirent(inode.parent, inode.name, ino)
            tx.set_writing(ino, True)
            self.placed(tx, inode, self.touch(tx, inode.parent, inode.ctime_ns, mtime=True))
            batch.add(record)
        if unborn:
            with self._lock:
                next_ino = max(self._next_ino or 0, tx.get_counter("next_ino"))
            tx.put_meta("next_ino", u64(next_ino))
        for plan in seals:
            self._seal_in(tx, batch, plan)
        return [ino for ino, _ in unborn], len(seals)

    def after_commit(self, token: object, committed: bool) -> None:
        """Commit hook: release the transaction's name claims; after a commit, move the
        files it stored to the grace list and drop the seals it wrote."""
        claims, self._txn_claims = self._txn_claims, []
        doomed, self._txn_doomed = self._txn_doomed, []
        now = time.monotonic()
        with self._lock:
            for name in claims:
                self._claims.discard(name)
            self._doomed.difference_update(doomed)
            if committed and token is not None:
                born, sealed = token  # type: ignore[misc]
                self.audit_failing = False  # whatever was buffered is written now
                for ino in born:  # into the grace list first, so readers always find it
                    inode = self._unborn[ino][0]
                    if ino not in self._renamed:  # its creation-time name is gone already
                        self._born[ino] = (inode, now)
                        self._born_names[(inode.parent, inode.name)] = ino
                    del self._unborn[ino]
                    self._unborn_names.pop((inode.parent, inode.name), None)
                del self._pending_seals[:sealed]
            while self._born:  # in the order they were stored: the oldest first
                ino, (inode, when) = next(iter(self._born.items()))
                if now - when <= BORN_GRACE_S:
                    break
                del self._born[ino]
                self._born_names.pop((inode.parent, inode.name), None)

    # -- provided by the other parts (declared here, the last class in the MRO) -------
    def _seal_in(self, tx: WriteTxn, batch: AuditBatch, plan: SealPlan) -> None:
        raise NotImplementedError  # sealing.SealOps

    def _flush_writer(self, writer: WriteHandle) -> None:
        raise NotImplementedError  # files.FileOps

    def _snapshot(self, writer: WriteHandle, *, truncate_to: int | None = None) -> Any:
        raise NotImplementedError  # files.FileOps

    def _store_snapshot(self, tx: WriteTxn, snap: Any, *, clean: bool) -> Inode:
        raise NotImplementedError  # files.FileOps

    def _retire_snapshot(self, snap: Any, *, marked_dirty: bool = False) -> None:
        raise NotImplementedError  # files.FileOps

    def _snapshot_failed(self, snap: Any) -> None:
        raise NotImplementedError  # files.FileOps

    def record(self, op: str, **fields: Any) -> None:
        """Durably append one record about the daemon itself (mount, unmount, ...)."""
        self.commit(lambda tx, batch: batch.add(self.log.stamp(op, **fields)))

    def has_pending(self, unborn_age_s: float = UNBORN_MAX_AGE_S) -> bool:
        """Whether the group commit has work: buffered records, decided seals, or files
        created more than ``unborn_age_s`` ago that no flush has stored yet."""
        if self.log.pending or self._pending_seals:
            return True
        oldest = next(iter(self._unborn.copy().values()), None)  # copy(): no lock here
        return oldest is not None and time.monotonic() - oldest[2] >= unborn_age_s

    def commit_pending(self) -> int:
        """Group commit: write buffered records, seals and old deferred creates.

        Returns how many buffered records were waiting. If this fails,
        :meth:`require_log` refuses new opens until a commit succeeds (fail closed:
        nothing is served that the log cannot record).
        """
        if not (self.log.pending or self._pending_seals or self._unborn):
            return 0
        waiting = self.log.pending
        try:
            self.commit(lambda tx, batch: None)
        except WormError:
            self.audit_failing = True
            raise
        self.audit_failing = False
        return waiting

    def require_log(self) -> None:
        if self.audit_failing or self.log.pending > MAX_PENDING_RECORDS:
            raise StorageError("the audit log cannot be written; refusing until it can")

    # ------------------------------------------------------------------ failsafe
    def _storage_failed(self, exc: Exception) -> None:
        """Committer hook: a commit failed. On a storage error the records it carried
        are not written either, so opens fail closed at once (:meth:`require_log`), not
        only after the housekeeping commit has failed too."""
        if isinstance(exc, StorageError):
            self.audit_failing = True
        if isinstance(exc, (StorageError, Corruption)):
            self.enter_failsafe(str(exc))

    def enter_failsafe(self, reason: str) -> None:
        """Stop accepting changes: reads go on, every change asked for through the mount
        or the control channel is refused until remount.

        The daemon itself still writes what it must not lose: audit records (refusals
        included), and the outcome of files whose writers close meanwhile (sealed if
        their last flush covered them, else quarantined), so none is left half-open.
        """
        if self.failsafe is not None:
            return
        self.failsafe = reason
        log.error("FAILSAFE: %s; reads continue, every change is refused until the store "
                  "is checked (worm-fs verify) and remounted", reason)
        self.log.note(self.log.stamp("failsafe", errno.EIO, reason=reason))

    def require_writable(self, op: str, caller: Caller, **fields: Any) -> None:
        """Refuse a change on a read-only mount or while in failsafe mode (audited)."""
        if self.read_only is not None:
            raise self._refuse(op, READ_ONLY_ERRNO, caller,
                               f"this mount is read-only ({self.read_only})", **fields)
        if self.failsafe is not None:
            raise self._refuse(op, FAILSAFE_ERRNO, caller,
                               f"the store is in failsafe mode ({self.failsafe})", **fields)

    # ------------------------------------------------------------------ inodes and names
    def inode_in(self, txn: ReadTxn, ino: int) -> Inode:
        """``ino`` as the core sees it: stored, or just created, with a live writer's
        size and mtime."""
        raw = txn.get_inode(ino)
        if raw is None:
            recent = self._recent_inode(ino)
            if recent is None:
                raise NotFound(f"inode {ino} does not exist")
            inode = replace(recent, extra=dict(recent.extra))
        else:
            inode = Inode.from_bytes(raw)
        writer = self._writers.get(ino)
        if writer is not None:
            inode.size = writer.size
            inode.mtime_ns = max(inode.mtime_ns, writer.mtime_ns)
        return inode

    def _recent_inode(self, ino: int) -> Inode | None:
        """A file created but not yet in the store, or stored by a recent commit."""
        unborn = self._unborn.get(ino)
        if unborn is not None:
            return unborn[0]
        born = self._born.get(ino)
        return None if born is None else born[0]

    def forget_recent(self, ino: int) -> None:
        """Drop ``ino`` from the grace list: its name is changing or going (inside a
        job; a just-created file the transaction stores is then kept out of the list)."""
        with self._lock:
            born = self._born.pop(ino, None)
            if born is not None:
                self._born_names.pop((born[0].parent, born[0].name), None)
        self._renamed.add(ino)

    def _child(self, txn: ReadTxn, parent: int, name: bytes) -> int | None:
        """The inode named ``name`` in ``parent``: stored, just created, or stored by a
        commit newer than ``txn``."""
        child = txn.get_dirent(parent, name)
        if child is None:
            child = self._unborn_names.get((parent, name))
        if child is None:
            child = self._born_names.get((parent, name))
        return child

    def _claim_in_job(self, txn: ReadTxn, parent: int, name: bytes) -> bool:
        """Claim a new name for the running job; False if it exists or is claimed."""
        with self._lock:
            key = (parent, name)
            if key in self._claims or key in self._unborn_names or \
                    txn.get_dirent(parent, name) is not None:
                return False
            self._claims.add(key)
        self._txn_claims.append(key)
        return True

    def _doom_in_job(self, dirs: set[int]) -> bool:
        """For an approval's job: mark ``dirs`` as going, so no create starts in them
        until the transaction ends; False if a create in one is under way already."""
        with self._lock:
            busy = any(parent in dirs for parent, _ in self._claims) or \
                any(parent in dirs for parent, _ in self._unborn_names)
            if busy:
                return False
            self._doomed.update(dirs)
        self._txn_doomed.extend(dirs)
        return True

    def _path(self, txn: ReadTxn, ino: int) -> str:
        recent = self._recent_inode(ino)
        if recent is not None and txn.get_inode(ino) is None:
            return self._child_path(txn, recent.parent, recent.name)
        return path_of(txn, ino)

    def _child_path(self, txn: ReadTxn, parent: int, name: bytes) -> str:
        base = self._path(txn, parent).rstrip("/")
        return f"{base}/{name.decode('utf-8', 'surrogateescape')}"

    def touch(
        self, tx: WriteTxn, ino: int, now: int, *, mtime: bool = False, subdirs: int = 0,
    ) -> Inode | None:
        """Mark ``ino`` itself as changed now (O(1): ancestors are not rewritten; see
        :mod:`worm_fs.core.settle`); ``mtime`` also sets its mtime and ctime, and
        ``subdirs`` is how many subdirectories the change added to it (or removed,
        negative). Returns the updated inode (None if it does not exist)."""
        raw = tx.get_inode(ino)
        if raw is None:
            return None
        inode = Inode.from_bytes(raw)
        inode.changed_ns = now
        inode.subdirs = max(0, inode.subdirs + subdirs)
        if mtime:
            inode.mtime_ns = inode.ctime_ns = now
        tx.put_inode(ino, inode.to_bytes())
        return inode

    def placed(self, tx: WriteTxn, entry: Inode, parent: Inode | None) -> None:
        """Inside a job: ``entry`` was just created in, or moved into, ``parent``. Counts
        entries placed under a directory of another creator (``mixed_entries``), so a
        rename decided on an older snapshot can tell that its survey is stale."""
        if parent is not None and parent.uid != entry.uid:
            tx.add_counter(MIXED_ENTRIES, 1)

    def _new_ino(self, tx: ReadTxn) -> int:
        """A fresh inode number (the counter is stored by the transaction's hook or the
        caller's job)."""
        with self._lock:
            if self._next_ino is None:
                self._next_ino = tx.get_counter("next_ino")
            ino = self._next_ino
            self._next_ino += 1
            return ino

    def _new_fh(self) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            return fh

    # ------------------------------------------------------------------ policy
    def _facts(
        self, txn: ReadTxn, op: Op, inode: Inode, caller: Caller, *,
        below: Survey | None = None, **extra: bool,
    ) -> Facts:
        """The facts for deciding ``op``. The settle window is computed only when the
        rule needs it; ``below`` passes in a survey already done on a snapshot (then
        only the entry itself is looked at here)."""
        is_creator = caller.uid == inode.uid
        unsettled, closed = False, ""
        if is_creator and needs_settle(op, inode):
            now = self.clock()
            if below is None:
                below = self._survey(txn, op, inode, caller) or Survey()
            unsettled, closed = window_open(inode, below, now, self.window)
        return Facts(is_creator=is_creator, unsettled=unsettled, closed=closed, **extra)

    def _survey(self, txn: ReadTxn, op: Op, inode: Inode, caller: Caller) -> Survey | None:
        """The settle survey of ``inode`` on a snapshot, for a job to use later (None
        when the decision does not depend on it)."""
        now = self.clock()
        if caller.uid != inode.uid or not needs_settle(op, inode) \
                or closed_itself(inode, now, self.window):
            return None
        return survey(txn, inode, now, self.window, self.inode_in, self._children)

    def _children(self, txn: ReadTxn, ino: int) -> list[int]:
        """Entries of directory ``ino``: stored, just stored (the grace list, for a
        snapshot begun before their commit) and created but not yet stored."""
        children = dict.fromkeys(child for _, child in txn.iter_dirents(ino))
        with self._lock:
            recent = [*self._unborn_names.items(), *self._born_names.items()]
        children.update(dict.fromkeys(c for (p, _), c in recent if p == ino))
        return list(children)

    def _who(self, caller: Caller) -> dict[str, Any]:
        return {"uid": caller.uid, "gid": caller.gid, "pid": caller.pid, "comm": caller.comm}

    def _refuse(self, op: str, err: int, caller: Caller, why: str, **fields: Any) -> Refused:
        """Note a refusal record and build the exception to raise."""
        self.log.note(self.log.stamp(op, err, reason=why, **self._who(caller), **fields))
        return Refused(why, errno=err)

    def _check(
        self, op: Op, audit_op: str, inode: Inode, facts: Facts, caller: Caller, path: str,
        **fields: Any,
    ) -> None:
        if self.read_only is not None:
            facts = replace(facts, read_only=True)
        err = decide(op, inode, facts)
        if err is not None:
            why = f"{op.value} refused on {inode.kind.value} ({inode.state.value})"
            if facts.read_only and err == READ_ONLY_ERRNO:
                why = f"{op.value} refused: this mount is read-only ({self.read_only})"
            if facts.is_creator and facts.closed and needs_settle(op, inode):
                why += f": {facts.closed}"
            raise self._refuse(audit_op, err, caller, why, path=path, ino=inode.ino, **fields)

    def _check_name(self, op: str, parent: int, name: bytes, caller: Caller) -> None:
        """Refuse (audited) a name that cannot be an entry's: the first check of every
        call that names one, before failsafe and policy."""
        err = name_errno(name)
        if err is None:
            return
        why = "file name too long" if err == errno.ENAMETOOLONG else "invalid file name"
        with self.store.read() as rt:
            path = self._child_path(rt, parent, name[:NAME_MAX])
        raise self._refuse(op, err, caller, why, path=path)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise WormError("bad file handle", errno=errno.EBADF)
        return handle


__all__ = ["ROOT_INO", "CoreState"]
