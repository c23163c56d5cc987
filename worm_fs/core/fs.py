"""The filesystem core: namespace, writing, sealing, refusals. Knows nothing of FUSE or trio.

Concurrency contract:

* Every method that changes state takes ``self._lock`` for its whole run and opens at
  most one write transaction at a time. Most commit before returning and may block
  (fsync, hashing): they are meant to run off the event loop. Two are deferred on
  purpose: a new file is stored by the next transaction (normally its first flush), and
  a seal decided at release is written by the next transaction (at most a group-commit
  interval later); every transaction writes such deferred work first.
* Calls that never wait for I/O (:meth:`create`, :meth:`write_buffered`, :meth:`open`,
  refusals, :meth:`release_if_quick`) may run on the event loop through
  :meth:`run_if_free`, which never waits for the lock.
* Lookup-style methods (:meth:`lookup`, :meth:`getattr`, :meth:`readdir`,
  :meth:`getxattr`, :meth:`listxattr`, :meth:`readlink`, :meth:`statfs`) only open
  short read transactions and read writer sizes from memory; they never take the lock,
  so they are cheap enough for the event loop.
* Every refusal is decided by :mod:`worm_fs.core.policy`, noted in the audit log and
  raised as :class:`~worm_fs.errors.Refused` carrying the errno.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, TypeVar

from worm_fs.audit.log import AuditBatch, AuditLog
from worm_fs.core.clock import advance_clock
from worm_fs.core.handles import Handle, WriteHandle
from worm_fs.core.model import AttrChange, Caller, Inode, Kind, State
from worm_fs.core.policy import FAILSAFE_ERRNO, Facts, Op, decide
from worm_fs.core.storer import ChunkStorer
from worm_fs.errors import Corruption, NotFound, Refused, StorageError, UsageError, WormError
from worm_fs.store import (
    CHUNK_SIZE,
    ReadTxn,
    Store,
    WriteTxn,
    check_chunk,
    load_chunk,
    put_chunk,
    release_chunk,
    u64,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT_INO = 1
SCHEMA_VERSION = 1
NAME_MAX = 255

#: A created file that no flush has stored yet is written by the group commit after this.
UNBORN_MAX_AGE_S = 1.0
#: How long a just-stored file stays visible to readers holding older snapshots.
BORN_GRACE_S = 10.0

#: Buffered records beyond which opens are refused until the log catches up.
MAX_PENDING_RECORDS = 100_000

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND

#: xattrs every file carries, and the root's extra ones.
XATTR_SHA256 = b"user.worm.sha256"
XATTR_STATE = b"user.worm.state"
XATTR_SEALED_AT = b"user.worm.sealed_at"
XATTR_STATE_DIR = b"user.worm.state_dir"
XATTR_RETAIN = b"user.worm.retain_until"
XATTR_HOLD = b"user.worm.hold"
XATTR_PROVENANCE = b"user.worm.provenance"
HOSTNAME = socket.gethostname()


def wants_write(flags: int) -> bool:
    return bool(flags & _WRITE_FLAGS)


class WormCore:
    """One store's filesystem semantics. See the module docstring for the contract."""

    def __init__(
        self,
        store: Store,
        log: AuditLog,
        *,
        settle_s: float = 60.0,
        audit_reads_each: bool = False,
        retention_days: float = 0.0,
        clock: Any = time.time_ns,
    ) -> None:
        self.store = store
        self.log = log
        self.settle_ns = int(settle_s * 1e9)
        self.audit_reads_each = audit_reads_each
        self.clock = clock
        self.retention_ns = int(retention_days * 86_400 * 1e9)
        self._lock = threading.RLock()
        self._storer = ChunkStorer(store, threading.Condition(self._lock),
                                   on_failure=self._storage_failed)
        self._handles: dict[int, Handle] = {}
        self._writers: dict[int, WriteHandle] = {}
        #: Files created but not yet in the store (see :meth:`create`): ino -> (inode,
        #: create record, monotonic creation time), in creation order.
        self._unborn: dict[int, tuple[Inode, dict[str, Any], float]] = {}
        self._unborn_names: dict[tuple[int, bytes], int] = {}
        #: Files written by a recent transaction, kept for :data:`BORN_GRACE_S` for
        #: lock-free readers whose read snapshot began before that commit (they would
        #: otherwise find the file neither in their snapshot nor in ``_unborn``).
        self._born: dict[int, tuple[Inode, float]] = {}
        self._born_names: dict[tuple[int, bytes], int] = {}
        #: Inodes renamed or deleted by the current transaction.
        self._renamed: set[int] = set()
        #: Seals decided at release and written by the next transaction.
        self._pending_seals: list[tuple[int, str, Caller, str]] = []
        self._next_ino: int | None = None
        self._next_fh = 1
        self.audit_failing = False
        #: Why the store stopped accepting changes (None while healthy).
        self.failsafe: str | None = None
        self.root_xattrs: dict[bytes, bytes] = {XATTR_STATE_DIR: str(store.path).encode()}

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[tuple[WriteTxn, AuditBatch]]:
        """A write transaction with an audit batch; commits both or neither.

        An I/O error from the store puts the core into failsafe mode.
        """
        with self._lock:
            self._renamed.clear()
            try:
                with self.store.write() as tx:
                    batch = self.log.batch(tx)
                    born = self._write_unborn(tx, batch)
                    sealed = self._write_seals(tx, batch)
                    yield tx, batch
                    batch.finish()
            except StorageError as exc:
                self._storage_failed(exc)
                raise
            self.log.committed(batch)
            self.audit_failing = False  # whatever was buffered is written now
            now = time.monotonic()
            for ino in born:  # into the grace list first, so readers always find it
                inode = self._unborn[ino][0]
                if ino not in self._renamed:  # its creation-time name is gone already
                    self._born[ino] = (inode, now)
                    self._born_names[(inode.parent, inode.name)] = ino
                del self._unborn[ino]
                self._unborn_names.pop((inode.parent, inode.name), None)
            for ino, (inode, when) in list(self._born.items()):
                if now - when > BORN_GRACE_S:
                    del self._born[ino]
                    self._born_names.pop((inode.parent, inode.name), None)
            del self._pending_seals[:sealed]

    def _write_unborn(self, tx: WriteTxn, batch: AuditBatch) -> list[int]:
        """Store the files created since the last transaction, with their records."""
        for ino, (inode, record, _) in self._unborn.items():
            tx.put_inode(ino, inode.to_bytes())
            tx.put_dirent(inode.parent, inode.name, ino)
            tx.set_writing(ino, True)
            self.touch(tx, inode.parent, inode.ctime_ns, mtime=True)
            batch.add(record)
        if self._unborn:
            tx.put_meta("next_ino", u64(max(self._next_ino or 0, tx.get_counter("next_ino"))))
        return list(self._unborn)

    def _write_seals(self, tx: WriteTxn, batch: AuditBatch) -> int:
        pending = list(self._pending_seals)
        for ino, digest, caller, op in pending:
            self._seal_in(tx, batch, ino, digest, caller, op)
        return len(pending)

    def _persist_unborn(self, ino: int | None = None) -> None:
        """Commit deferred creates now (all, or if ``ino`` is one of them)."""
        if self._unborn and (ino is None or ino in self._unborn):
            with self.transaction():
                pass

    # ------------------------------------------------------------------ failsafe
    def _storage_failed(self, exc: Exception) -> None:
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
        """Refuse a change while in failsafe mode (audited)."""
        if self.failsafe is not None:
            raise self._refuse(op, FAILSAFE_ERRNO, caller,
                               f"the store is in failsafe mode ({self.failsafe})", **fields)

    def record(self, op: str, **fields: Any) -> None:
        """Durably append one record about the daemon itself (mount, unmount, ...)."""
        with self.transaction() as (_, batch):
            batch.add(self.log.stamp(op, **fields))

    def has_pending(self, unborn_age_s: float = UNBORN_MAX_AGE_S) -> bool:
        """Whether the group commit has work: buffered records, decided seals, or files
        created more than ``unborn_age_s`` ago that no flush has stored yet."""
        if self.log.pending or self._pending_seals:
            return True
        oldest = next(iter(self._unborn.copy().values()), None)  # copy(): no lock here
        return oldest is not None and time.monotonic() - oldest[2] >= unborn_age_s

    def commit_pending(self) -> int:
        """Group commit: write buffered records, seals and old deferred creates.

        Returns how many buffered records were written. If this fails,
        :meth:`require_log` refuses new opens until a commit succeeds (fail closed:
        nothing is served that the log cannot record).
        """
        if not (self.log.pending or self._pending_seals or self._unborn):
            return 0
        try:
            with self.transaction() as (_, batch):
                drained = batch.drained
        except WormError:
            self.audit_failing = True
            raise
        self.audit_failing = False
        return drained

    def require_log(self) -> None:
        if self.audit_failing or self.log.pending > MAX_PENDING_RECORDS:
            raise StorageError("the audit log cannot be written; refusing until it can")

    # ------------------------------------------------------------------ setup
    def initialize(self) -> bool:
        """Create the root and store identity on first use. Returns True if created."""
        with self.store.read() as rt:
            if rt.get_meta("schema_version") is not None:
                version = int(rt.get_meta("schema_version") or b"0")
                if version != SCHEMA_VERSION:
                    raise UsageError(f"store schema {version} is not supported")
                return False
        now = self.clock()
        root = Inode(
            ino=ROOT_INO, kind=Kind.DIR, mode=0o755, uid=os.getuid(), gid=os.getgid(),
            parent=ROOT_INO, name=b"", atime_ns=now, mtime_ns=now, ctime_ns=now,
            changed_ns=now,
        )
        with self.transaction() as (tx, batch):
            tx.put_meta("schema_version", str(SCHEMA_VERSION).encode())
            tx.put_meta("store_id", secrets.token_hex(8).encode())
            tx.put_meta("next_ino", u64(ROOT_INO + 1))
            tx.put_inode(ROOT_INO, root.to_bytes())
            batch.add(self.log.stamp("init", path="/", ino=ROOT_INO))
        return True

    def store_id(self) -> str:
        with self.store.read() as rt:
            return (rt.get_meta("store_id") or b"").decode()

    # ------------------------------------------------------------------ helpers
    def inode_in(self, txn: ReadTxn, ino: int) -> Inode:
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
        """Drop ``ino`` from the grace list: its name is changing or going (call inside
        a transaction; a just-created file it stores is then kept out of the list)."""
        born = self._born.pop(ino, None)
        if born is not None:
            self._born_names.pop((born[0].parent, born[0].name), None)
        self._renamed.add(ino)

    def _path(self, txn: ReadTxn, ino: int) -> str:
        recent = self._recent_inode(ino)
        if recent is not None and txn.get_inode(ino) is None:
            return self._child_path(txn, recent.parent, recent.name)
        return path_of(txn, ino)

    def _child(self, txn: ReadTxn, parent: int, name: bytes) -> int | None:
        """The inode named ``name`` in ``parent``: stored, just created, or stored by a
        commit newer than ``txn``."""
        child = txn.get_dirent(parent, name)
        if child is None:
            child = self._unborn_names.get((parent, name))
        if child is None:
            child = self._born_names.get((parent, name))
        return child

    def _child_path(self, txn: ReadTxn, parent: int, name: bytes) -> str:
        base = self._path(txn, parent).rstrip("/")
        return f"{base}/{name.decode('utf-8', 'surrogateescape')}"

    def retention_of(self, inode: Inode) -> int:
        """When ``inode``'s own retention ends (ns; 0 = none): the later of a retention
        set on it and, for a sealed file, its seal time plus the mount's retention."""
        until = int(inode.extra.get("retain_until_ns", 0))  # type: ignore[arg-type]
        if inode.kind is Kind.FILE and inode.sealed_ns and self.retention_ns:
            until = max(until, inode.sealed_ns + self.retention_ns)
        return until

    def _unsettled(self, inode: Inode) -> bool:
        if self.settle_ns <= 0:
            return False
        if inode.kind is Kind.FILE and inode.state is State.WRITING:
            return True
        return self.clock() - inode.changed_ns < self.settle_ns

    def _facts(self, inode: Inode, caller: Caller, **extra: bool) -> Facts:
        return Facts(
            is_creator=caller.uid == inode.uid,
            unsettled=self._unsettled(inode),
            **extra,
        )

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
        err = decide(op, inode, facts)
        if err is not None:
            raise self._refuse(
                audit_op, err, caller, f"{op.value} refused on {inode.kind.value} "
                f"({inode.state.value})", path=path, ino=inode.ino, **fields,
            )

    def touch(self, tx: WriteTxn, ino: int, now: int, *, mtime: bool = False) -> None:
        """Mark ``ino`` and its ancestors as changed now (restarts their settle window)."""
        first = True
        for _ in range(4096):
            raw = tx.get_inode(ino)
            if raw is None:
                return
            inode = Inode.from_bytes(raw)
            inode.changed_ns = now
            if first and mtime:
                inode.mtime_ns = inode.ctime_ns = now
            first = False
            tx.put_inode(ino, inode.to_bytes())
            if ino == ROOT_INO:
                return
            ino = inode.parent

    def _new_ino(self, tx: WriteTxn) -> int:
        if self._next_ino is None:
            self._next_ino = tx.get_counter("next_ino")
        ino = self._next_ino
        self._next_ino += 1
        tx.put_meta("next_ino", u64(self._next_ino))
        return ino

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _check_name(self, op: str, parent: int, name: bytes, caller: Caller) -> None:
        """Refuse (audited) a new name the kernel should never send us anyway."""
        if len(name) > NAME_MAX:
            err, why = errno.ENAMETOOLONG, "file name too long"
        elif not name or b"/" in name or name in (b".", b".."):
            err, why = errno.EINVAL, "invalid file name"
        else:
            return
        with self.store.read() as rt:
            path = self._child_path(rt, parent, name[:NAME_MAX])
        raise self._refuse(op, err, caller, why, path=path)

    # ------------------------------------------------------------------ lookups
    def lookup(self, parent: int, name: bytes) -> Inode:
        with self.store.read() as rt:
            child = self._child(rt, parent, name)
            if child is None:
                raise NotFound()
            return self.inode_in(rt, child)

    def getattr(self, ino: int) -> Inode:
        with self.store.read() as rt:
            return self.inode_in(rt, ino)

    def readdir(self, ino: int) -> list[tuple[bytes, Inode]]:
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            if inode.kind is not Kind.DIR:
                raise WormError("not a directory", errno=errno.ENOTDIR)
            entries = {name: child for name, child in rt.iter_dirents(ino)}
            # .copy() is atomic; iterating the live dicts could race with a commit.
            for names in (self._unborn_names.copy(), self._born_names.copy()):
                for (parent, name), child in names.items():
                    if parent == ino:
                        entries.setdefault(name, child)
            return [(name, self.inode_in(rt, child)) for name, child in sorted(entries.items())]

    def readlink(self, ino: int) -> bytes:
        inode = self.getattr(ino)
        if inode.kind is not Kind.SYMLINK:
            raise WormError("not a symlink", errno=errno.EINVAL)
        return inode.target

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.xattrs(ino).get(name)
        if value is None:
            raise WormError("no such attribute", errno=errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self.xattrs(ino))

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        inode = self.getattr(ino)
        out: dict[bytes, bytes] = {}
        if inode.kind is Kind.FILE:
            out[XATTR_STATE] = inode.state.value.encode()
            if inode.state is State.SEALED:
                out[XATTR_SHA256] = inode.sha256.encode()
                out[XATTR_SEALED_AT] = iso_time(inode.sealed_ns).encode()
                if "provenance" in inode.extra:
                    out[XATTR_PROVENANCE] = json.dumps(
                        inode.extra["provenance"], sort_keys=True).encode()
        if self.retention_of(inode):
            out[XATTR_RETAIN] = iso_time(self.retention_of(inode)).encode()
        hold = inode.extra.get("hold")
        if isinstance(hold, dict):
            out[XATTR_HOLD] = str(hold.get("reason", "")).encode()
        if ino == ROOT_INO:
            out.update(self.root_xattrs)
        return out

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.store.path)

    def stats(self) -> dict[str, Any]:
        return store_stats(self.store)

    # ------------------------------------------------------------------ creating names
    def _prepare_new(
        self, tx: ReadTxn, parent: int, name: bytes, op: str, caller: Caller
    ) -> tuple[Inode, str]:
        parent_inode = self.inode_in(tx, parent)
        path = self._child_path(tx, parent, name)
        err = decide(Op.CREATE, parent_inode, Facts())
        if err is not None:
            raise self._refuse(op, err, caller, "parent is not a directory", path=path)
        if self._child(tx, parent, name) is not None:
            raise self._refuse(op, errno.EEXIST, caller, "name exists", path=path)
        return parent_inode, path

    def _add_entry(
        self, tx: WriteTxn, parent: int, name: bytes, kind: Kind, mode: int, caller: Caller,
        **fields: Any,
    ) -> Inode:
        now = self.clock()
        inode = Inode(
            ino=self._new_ino(tx), kind=kind, mode=mode & 0o7777, uid=caller.uid,
            gid=caller.gid, parent=parent, name=name, atime_ns=now, mtime_ns=now,
            ctime_ns=now, changed_ns=now, **fields,
        )
        tx.put_inode(inode.ino, inode.to_bytes())
        tx.put_dirent(parent, name, inode.ino)
        self.touch(tx, parent, now, mtime=True)
        return inode

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, caller: Caller
    ) -> tuple[int, Inode]:
        """A new file and its single writable handle.

        The new entry is kept in memory (visible to lookups) and stored, with its audit
        record, by the next transaction: normally the file's first flush, so creating,
        writing and closing a small file costs one synced commit. A file is stored
        anyway before its first chunk is, and by the group commit after
        :data:`UNBORN_MAX_AGE_S`. Like any filesystem's, a create is durable once the
        file is flushed; a crash before that loses a file nobody has closed yet.
        """
        self._check_name("create", parent, name, caller)
        self.require_writable("create", caller)
        with self._lock:
            with self.store.read() as rt:
                _, path = self._prepare_new(rt, parent, name, "create", caller)
                if self._next_ino is None:
                    self._next_ino = rt.get_counter("next_ino")
            now = self.clock()
            inode = Inode(
                ino=self._next_ino, kind=Kind.FILE, mode=mode & 0o7777, uid=caller.uid,
                gid=caller.gid, parent=parent, name=name, atime_ns=now, mtime_ns=now,
                ctime_ns=now, changed_ns=now, state=State.WRITING, clean=False,
                extra={"writer": {"uid": caller.uid, "gid": caller.gid, "pid": caller.pid,
                                  "comm": caller.comm, "cmdline": list(caller.cmdline)}},
            )
            self._next_ino += 1
            record = self.log.stamp("create", path=path, ino=inode.ino, flags=flags,
                                    mode=inode.mode, **self._who(caller))
            self._unborn[inode.ino] = (inode, record, time.monotonic())
            self._unborn_names[(parent, name)] = inode.ino
            handle = WriteHandle(
                fh=self._new_fh(), ino=inode.ino, caller=caller, flags=flags,
                mtime_ns=inode.mtime_ns,
            )
            self._handles[handle.fh] = handle
            self._writers[inode.ino] = handle
        return handle.fh, inode

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        self._check_name("mkdir", parent, name, caller)
        self.require_writable("mkdir", caller)
        with self.transaction() as (tx, batch):
            _, path = self._prepare_new(tx, parent, name, "mkdir", caller)
            inode = self._add_entry(tx, parent, name, Kind.DIR, mode, caller)
            batch.add(self.log.stamp(
                "mkdir", path=path, ino=inode.ino, mode=inode.mode, **self._who(caller)
            ))
        return inode

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Inode:
        self._check_name("symlink", parent, name, caller)
        self.require_writable("symlink", caller)
        with self.transaction() as (tx, batch):
            _, path = self._prepare_new(tx, parent, name, "symlink", caller)
            inode = self._add_entry(
                tx, parent, name, Kind.SYMLINK, 0o777, caller, size=len(target), target=target
            )
            batch.add(self.log.stamp(
                "symlink", path=path, ino=inode.ino,
                target=target.decode("utf-8", "surrogateescape"), **self._who(caller),
            ))
        return inode

    # ------------------------------------------------------------------ refused outright
    def _refuse_entry(
        self, op: Op, audit_op: str, parent: int, name: bytes, caller: Caller, **fields: Any
    ) -> None:
        with self.store.read() as rt:
            path = self._child_path(rt, parent, name)
            child = self._child(rt, parent, name)
            if child is None:
                raise self._refuse(audit_op, errno.ENOENT, caller, "no such entry", path=path)
            inode = self.inode_in(rt, child)
        self._check(op, audit_op, inode, self._facts(inode, caller), caller, path, **fields)
        raise AssertionError(f"policy allowed {op}")  # the table never allows these

    def unlink(self, parent: int, name: bytes, caller: Caller) -> None:
        self._refuse_entry(Op.UNLINK, "unlink", parent, name, caller)

    def rmdir(self, parent: int, name: bytes, caller: Caller) -> None:
        self._refuse_entry(Op.RMDIR, "rmdir", parent, name, caller)

    def link(self, ino: int, new_parent: int, new_name: bytes, caller: Caller) -> None:
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)
            new_path = self._child_path(rt, new_parent, new_name)
        self._check(Op.LINK, "link", inode, Facts(), caller, path, new_path=new_path)

    def mknod(self, parent: int, name: bytes, mode: int, caller: Caller) -> None:
        with self.store.read() as rt:
            parent_inode = self.inode_in(rt, parent)
            path = self._child_path(rt, parent, name)
        self._check(Op.MKNOD, "mknod", parent_inode, Facts(), caller, path, mode=mode)

    def setxattr(self, ino: int, name: bytes, caller: Caller) -> None:
        op = Op.SETXATTR if name.startswith(b"user.") else Op.SET_FOREIGN_XATTR
        self._refuse_xattr(op, "setxattr", ino, name, caller)

    def removexattr(self, ino: int, name: bytes, caller: Caller) -> None:
        self._refuse_xattr(Op.REMOVEXATTR, "removexattr", ino, name, caller)

    def _refuse_xattr(self, op: Op, audit_op: str, ino: int, name: bytes, caller: Caller) -> None:
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)
        self._check(op, audit_op, inode, Facts(), caller, path,
                    name=name.decode("utf-8", "surrogateescape"))

    # ------------------------------------------------------------------ rename
    def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int,
        caller: Caller, *, exchange: bool = False,
    ) -> None:
        self._check_name("rename", new_parent, new_name, caller)
        self.require_writable("rename", caller)
        with self.transaction() as (tx, batch):
            path = self._child_path(tx, old_parent, old_name)
            new_path = self._child_path(tx, new_parent, new_name)
            paths = {"path": path, "new_path": new_path, "flags": flags}
            child = tx.get_dirent(old_parent, old_name)
            if child is None:
                raise self._refuse("rename", errno.ENOENT, caller, "no such entry", **paths)
            inode = self.inode_in(tx, child)
            target = tx.get_dirent(new_parent, new_name)
            if target is not None or exchange:
                self._check(Op.RENAME_OVER, "rename", inode, Facts(), caller, **paths)
            self._check(Op.RENAME, "rename", inode, self._facts(inode, caller), caller, **paths)
            dest = self.inode_in(tx, new_parent)
            if dest.kind is not Kind.DIR:
                raise self._refuse("rename", errno.ENOTDIR, caller, "not a directory", **paths)
            if inode.kind is Kind.DIR and self._is_under(tx, new_parent, inode.ino):
                raise self._refuse("rename", errno.EINVAL, caller,
                                   "cannot move a directory into itself", **paths)
            now = self.clock()
            self.forget_recent(inode.ino)
            tx.delete_dirent(old_parent, old_name)
            tx.put_dirent(new_parent, new_name, inode.ino)
            stored = Inode.from_bytes(tx.get_inode(inode.ino) or b"")
            stored.parent, stored.name, stored.ctime_ns = new_parent, new_name, now
            tx.put_inode(inode.ino, stored.to_bytes())
            self.touch(tx, old_parent, now, mtime=True)
            self.touch(tx, new_parent, now, mtime=True)
            batch.add(self.log.stamp("rename", ino=inode.ino, **paths, **self._who(caller)))

    def _is_under(self, txn: ReadTxn, ino: int, ancestor: int) -> bool:
        for _ in range(4096):
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.inode_in(txn, ino).parent
        return False

    # ------------------------------------------------------------------ setattr
    def setattr(self, ino: int, change: AttrChange, fh: int | None, caller: Caller) -> Inode:
        with self._lock:
            self.require_writable("setattr", caller, ino=ino)
            with self.store.read() as rt:
                inode = self.inode_in(rt, ino)
                path = self._path(rt, ino)
            writer = self._writers.get(ino)
            via_writer = writer is not None and fh == writer.fh
            facts = self._facts(inode, caller, via_writer=via_writer)
            fields = _change_fields(change)
            if change.size is not None:
                self._check(Op.TRUNCATE, "truncate", inode, facts, caller, path, **fields)
            if change.mode is not None:
                self._check(Op.CHMOD, "chmod", inode, facts, caller, path, **fields)
            if change.uid is not None or change.gid is not None:
                noop = change.uid in (None, inode.uid) and change.gid in (None, inode.gid)
                self._check(Op.CHOWN, "chown", inode, replace(facts, is_noop=noop), caller,
                            path, **fields)
            if change.atime_ns is not None or change.mtime_ns is not None:
                self._check(Op.UTIMES, "utimes", inode, facts, caller, path, **fields)
            if change.size is not None and writer is not None:
                self._storer.drain(writer)
                if writer.error is not None:
                    raise writer.error
                self._truncate(writer, change.size)
            with self.transaction() as (tx, batch):
                # The stored record, not the writer's view: its size is what is stored.
                stored = Inode.from_bytes(tx.get_inode(ino) or b"")
                if change.mode is not None:
                    mode = change.mode & 0o7777
                    if stored.kind is Kind.FILE and stored.state is not State.WRITING:
                        mode &= ~0o222  # write bits never come back once sealed
                    stored.mode = mode
                if change.atime_ns is not None:
                    stored.atime_ns = change.atime_ns
                if change.mtime_ns is not None:
                    stored.mtime_ns = change.mtime_ns
                    if writer is not None:
                        writer.mtime_ns = change.mtime_ns
                if change.size is not None and writer is not None:
                    self._settle_writer(tx, writer)
                    stored.size = writer.size
                    stored.clean = False  # changed since the last flush, like a write
                    self._drop_chunks_from(tx, writer.ino, -(-writer.size // CHUNK_SIZE))
                stored.ctime_ns = self.clock()
                tx.put_inode(ino, stored.to_bytes())
                batch.add(self.log.stamp(
                    "setattr", path=path, ino=ino, applied_mode=stored.mode, **fields,
                    **self._who(caller),
                ))
            if change.size is not None and writer is not None:
                self._settled(writer)
                writer.dirty_marked = True  # the truncate stored clean=False
            return self.getattr(ino)

    def _truncate(self, writer: WriteHandle, size: int) -> None:
        with self.store.read() as rt:
            writer.truncate(size, lambda i: self._load_stored(rt, writer.ino, i))
        writer.durable_clean = False

    def _drop_chunks_from(self, tx: WriteTxn, ino: int, first: int) -> None:
        for index, key in list(tx.iter_manifest(ino)):
            if index >= first:
                tx.delete_manifest(ino, index)
                release_chunk(tx, key)

    # ------------------------------------------------------------------ open / read
    def open(self, ino: int, flags: int, caller: Caller) -> tuple[int, Inode]:
        """A read handle; every write-access open of an existing name is refused."""
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)
        self.require_log()
        op = Op.OPEN_WRITE if wants_write(flags) else Op.OPEN_READ
        self._check(op, "open", inode, self._facts(inode, caller), caller, path, flags=flags)
        with self._lock:
            handle = Handle(fh=self._new_fh(), ino=ino, caller=caller, flags=flags,
                            size=None if inode.state is State.WRITING else inode.size)
            self._handles[handle.fh] = handle
        self.log.note(self.log.stamp(
            "open", path=path, ino=ino, flags=flags, **self._who(caller)
        ))
        return handle.fh, inode

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise WormError("bad file handle", errno=errno.EBADF)
        return handle

    def _load_stored(self, rt: ReadTxn, ino: int, index: int) -> bytes | None:
        key = rt.get_manifest(ino, index)
        return None if key is None else load_chunk(rt, key)

    def read(self, fh: int, off: int, size: int) -> bytes:
        """Read through a handle.

        Reads of sealed and quarantined files (immutable) run without the core lock, so
        several can fault in store pages at once; a file still being written is read
        under the lock, from its writer's buffers and the store.
        """
        handle = self._handle(fh)
        try:
            writer = self._writers.get(handle.ino)
            if writer is not None:
                with self._lock:
                    data = self._read_writing(handle, off, size)
            else:
                data = self._read_immutable(handle, off, size)
        except Corruption as exc:
            self._report_corruption(handle, str(exc))
            self.enter_failsafe(f"corrupt data detected: {exc}")
            raise
        with handle.lock:
            handle.reads.add(off, len(data))
        if self.audit_reads_each:
            self.log.note(self.log.stamp(
                "read", ino=handle.ino, offset=off, bytes=len(data), fh=fh,
                **self._who(handle.caller),
            ))
        return data

    def _read_writing(self, handle: Handle, off: int, size: int) -> bytes:
        writer = self._writers.get(handle.ino)
        with self.store.read() as rt:
            if writer is None:  # sealed meanwhile
                return self._read_chunks(rt, handle, off, size)
            return writer.read(off, size, lambda i: self._load_stored(rt, handle.ino, i))

    def _read_immutable(self, handle: Handle, off: int, size: int) -> bytes:
        with self.store.read() as rt:
            return self._read_chunks(rt, handle, off, size)

    def _read_chunks(self, rt: ReadTxn, handle: Handle, off: int, size: int) -> bytes:
        if handle.size is None:
            handle.size = self.inode_in(rt, handle.ino).size
        end = min(off + size, handle.size)
        pieces: list[bytes] = []
        pos = off
        while pos < end:
            index, coff = divmod(pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, end - pos)
            key = rt.get_manifest(handle.ino, index)
            cached_key, cached_data = handle.cache
            if key is None:
                if rt.get_inode(handle.ino) is None:  # deleted under an open handle
                    raise WormError("the file was deleted", errno=errno.ESTALE)
                data = b""
            elif key == cached_key:
                data = cached_data
            else:
                data = check_chunk(key, rt.get_chunk(key))
                handle.cache = (key, data)  # one assignment: safe for concurrent readers
            piece = data if coff == 0 and n == len(data) else data[coff : coff + n]
            pieces.append(piece)
            if len(piece) < n:
                pieces.append(bytes(n - len(piece)))
            pos += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _report_corruption(self, handle: Handle, what: str) -> None:
        with self.store.read() as rt:
            path = self._path(rt, handle.ino)
        self.log.note(self.log.stamp(
            "corruption", errno.EIO, path=path, ino=handle.ino, detail=what,
            **self._who(handle.caller),
        ))

    # ------------------------------------------------------------------ write / flush
    def write(self, fh: int, off: int, data: bytes) -> int:
        """Write through the writer handle (may block: see :meth:`write_buffered`)."""
        follow_up = self.write_buffered(fh, off, data)
        if follow_up is not None:
            follow_up()
        return len(data)

    def write_buffered(self, fh: int, off: int, data: bytes) -> Callable[[], None] | None:
        """Copy ``data`` into the writer's chunk buffers; never blocks on I/O.

        Returns the follow-up that may block, to run (off the event loop) before the
        write is acknowledged, or None: durably marking the file as changed since its
        last flush, storing a just-created file before its first chunk, and handing
        filled chunks to the storer (which blocks when it is
        :data:`~worm_fs.core.storer.MAX_IN_FLIGHT` chunks behind).
        """
        with self._lock:
            handle = self._handle(fh)
            writer = self._writers.get(handle.ino)
            if writer is None or writer.fh != fh:
                raise WormError("handle is not writable", errno=errno.EBADF)
            if writer.error is not None:
                raise writer.error
            self.require_writable("write", writer.caller, ino=writer.ino)
            # The store must say "not clean" before a write after a flush is
            # acknowledged, or a crash would seal the file without it.
            mark_dirty = not writer.dirty_marked
            writer.durable_clean = False
            with self.store.read() as rt:
                writer.write(off, data, lambda i: self._load_stored(rt, writer.ino, i))
            writer.mtime_ns = self.clock()
            handoff = writer.hand_off()
            if handoff and not mark_dirty and writer.ino not in self._unborn:
                # The usual case of a long sequential write: queue without waiting.
                while handoff and self._storer.try_submit(writer, *handoff[0]):
                    handoff.pop(0)
        if not (mark_dirty or handoff):
            return None

        def follow_up() -> None:
            try:
                if mark_dirty:  # only the flag: the durable size stays what was flushed
                    with self.transaction() as (tx, _):
                        if not writer.dirty_marked and not writer.durable_clean:
                            inode = Inode.from_bytes(tx.get_inode(writer.ino) or b"")
                            inode.clean = False
                            tx.put_inode(writer.ino, inode.to_bytes())
                    writer.dirty_marked = not writer.durable_clean
                if handoff:
                    with self._lock:
                        self._persist_unborn(writer.ino)  # chunks need their inode first
                while handoff:
                    self._storer.submit(writer, *handoff[0])
                    handoff.pop(0)
            except BaseException as exc:
                # The chunks not submitted stay in ``pending`` for the next flush to
                # store; they must not be counted as queued, or drain() would wait
                # forever, and the writer reports the failure from now on.
                with self._lock:
                    writer.queued -= len(handoff)
                    if isinstance(exc, WormError) and writer.error is None:
                        writer.error = exc
                    self._storer.wake()
                raise

        return follow_up

    def run_if_free(self, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """Run ``fn`` now if the core lock is free, else report that it was not.

        For calls that never block on I/O (create, buffered writes, opens, refusals,
        quick releases) made from the event loop: they skip a thread hop, and they
        never wait behind another thread's commit.
        """
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            return True, fn(*args)
        finally:
            self._lock.release()

    def flush_is_noop(self, fh: int) -> bool:
        """Whether :meth:`flush` has nothing to make durable for ``fh``."""
        handle = self._handles.get(fh)
        writer = self._writers.get(handle.ino) if handle is not None else None
        return writer is None or writer.fh != fh or writer.durable_clean

    def release_if_quick(self, fh: int) -> bool:
        """Release ``fh`` now if that needs no commit and little reading; else False."""
        handle = self._handles.get(fh)
        if handle is None:
            return True
        writer = self._writers.get(handle.ino)
        if writer is not None and writer.fh == fh:
            last = -(-writer.size // CHUNK_SIZE)
            if not writer.durable_clean or writer.sha is None or last - writer.sha_next > 1:
                return False
        self.release(fh)
        return True

    def _persist_inode(self, tx: WriteTxn, writer: WriteHandle, *, clean: bool) -> Inode:
        inode = Inode.from_bytes(tx.get_inode(writer.ino) or b"")
        inode.size = writer.size
        inode.mtime_ns = writer.mtime_ns
        inode.clean = clean
        tx.put_inode(writer.ino, inode.to_bytes())
        return inode

    def _store_chunk(
        self, tx: WriteTxn, writer: WriteHandle, index: int, data: bytes | bytearray
    ) -> None:
        key = put_chunk(tx, data)
        old = tx.get_manifest(writer.ino, index)
        tx.put_manifest(writer.ino, index, key)
        if old is not None:
            release_chunk(tx, old)
        writer.feed_sha(index, data)

    def _settle_writer(self, tx: WriteTxn, writer: WriteHandle) -> None:
        """Store whatever the writer holds: chunks the storer failed on, then buffers.

        Call with the core lock held, after :meth:`ChunkStorer.drain`.
        """
        for index in sorted(writer.pending):
            self._store_chunk(tx, writer, index, writer.pending[index])
        for index in sorted(writer.buffers):
            buf = writer.buffers[index]
            if buf.dirty:
                self._store_chunk(tx, writer, index, buf.data)

    def _settled(self, writer: WriteHandle) -> None:
        """After the transaction that stored them committed."""
        writer.pending.clear()
        for buf in writer.buffers.values():
            buf.dirty = False
        writer.error = None

    def flush(self, fh: int) -> None:
        """Make everything written through ``fh`` durable (each ``close``)."""
        with self._lock:
            handle = self._handle(fh)
            writer = self._writers.get(handle.ino)
            if writer is None or writer.fh != fh:
                return
            if writer.durable_clean:
                return
            self._flush_writer(writer)

    def _flush_writer(self, writer: WriteHandle) -> None:
        self.require_writable("flush", writer.caller, ino=writer.ino)
        self._storer.drain(writer)
        with self.transaction() as (tx, batch):
            self._settle_writer(tx, writer)
            inode = self._persist_inode(tx, writer, clean=True)
            self.touch(tx, writer.ino, self.clock())
            batch.add(self.log.stamp(
                "flush", path=self._path(tx, writer.ino), ino=writer.ino, size=inode.size,
                writes=writer.writes.summary(), **self._who(writer.caller),
            ))
        self._settled(writer)
        writer.writes = type(writer.writes)()
        writer.durable_clean = True
        writer.dirty_marked = False

    def fsync(self, fh: int) -> None:
        self.flush(fh)

    # ------------------------------------------------------------------ release / seal
    def release(self, fh: int) -> None:
        """Last close of a handle: a writer's file is sealed, a reader's reads recorded.

        The seal's digest is finished outside the core lock (a file that was patched
        after being stored, like a zip, is re-read whole); the seal itself is written by
        the next transaction.
        """
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is None:
                return
            writer = self._writers.get(handle.ino)
            if writer is None or writer.fh != fh:
                with self.store.read() as rt:
                    path = self._path(rt, handle.ino)
                self.log.note(self.log.stamp(
                    "release", path=path, ino=handle.ino, reads=handle.reads.summary(),
                    **self._who(handle.caller),
                ))
                return
            try:
                if not writer.durable_clean:
                    self._flush_writer(writer)
            except WormError as exc:
                self._seal_failed(writer, exc)
                raise
        try:
            digest = self._file_sha256(writer.ino, writer)
        except WormError as exc:
            with self._lock:
                self._seal_failed(writer, exc)
            raise
        with self._lock:
            # Written by the next transaction (at most a group-commit interval later);
            # a crash before that seals it at recovery: it is clean.
            self._pending_seals.append((writer.ino, digest, writer.caller, "seal"))
            del self._writers[writer.ino]

    def _seal_failed(self, writer: WriteHandle, exc: WormError) -> None:
        """Its last bytes may not be durable: never present it as complete."""
        log.warning("could not seal inode %d (%s); quarantining it", writer.ino, exc.message)
        self._storer.drain(writer)  # before it stops counting as written (deletion checks)
        self._writers.pop(writer.ino, None)
        try:
            self._quarantine(writer.ino, writer.caller, reason=exc.message)
        except WormError as again:
            log.error("could not quarantine inode %d either (%s); recovery will at the "
                      "next start", writer.ino, again.message)

    def _file_sha256(self, ino: int, writer: WriteHandle | None = None) -> str:
        """SHA-256 of a file's durable content (continuing the writer's running hash)."""
        with self.store.read() as rt:
            inode = Inode.from_bytes(rt.get_inode(ino) or b"")
            with writer.sha_lock if writer is not None else threading.Lock():
                running = writer.sha.copy() if writer is not None and writer.sha is not None \
                    else None
                start = writer.sha_next if running is not None else 0
            sha = running if running is not None else hashlib.sha256()
            nchunks = -(-inode.size // CHUNK_SIZE)
            for index in range(start, nchunks):
                length = min(CHUNK_SIZE, inode.size - index * CHUNK_SIZE)
                data = self._load_stored(rt, ino, index) or b""
                sha.update(data[:length])
                if len(data) < length:
                    sha.update(bytes(length - len(data)))
            return sha.hexdigest()

    def _seal(self, ino: int, digest: str, caller: Caller, op: str) -> None:
        with self.transaction() as (tx, batch):
            self._seal_in(tx, batch, ino, digest, caller, op)

    def _seal_in(
        self, tx: WriteTxn, batch: AuditBatch, ino: int, digest: str, caller: Caller, op: str
    ) -> None:
        """Seal ``ino`` with its SHA-256; records the seal and the file's provenance."""
        now = advance_clock(tx, self.clock())  # retention counts from trusted time
        inode = Inode.from_bytes(tx.get_inode(ino) or b"")
        path = self._path(tx, ino)
        seq = batch.add(self.log.stamp(
            op, path=path, ino=ino, size=inode.size, sha256=digest, **self._who(caller),
        ))
        inode.state = State.SEALED
        inode.mode &= ~0o222
        inode.sha256 = digest
        inode.sealed_ns = now
        if self.retention_ns:  # stamped, so a later, shorter mount option cannot shorten it
            inode.extra["retain_until_ns"] = max(
                int(inode.extra.get("retain_until_ns", 0)),  # type: ignore[arg-type]
                now + self.retention_ns,
            )
        inode.extra["provenance"] = {
            **dict(inode.extra.get("writer") or {}),  # type: ignore[arg-type]
            "host": HOSTNAME, "sealed_at": iso_time(now), "seal_seq": seq,
            "sha256": digest, "size": inode.size,
            **({"recovered": True} if op != "seal" else {}),
        }
        inode.clean = True
        inode.ctime_ns = now
        tx.put_inode(ino, inode.to_bytes())
        tx.set_writing(ino, False)
        tx.add_counter("files", 1)
        tx.add_counter("logical_bytes", inode.size)
        self.touch(tx, ino, now)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> dict[str, list[str]]:
        """Seal or quarantine files left writing by a crash. Run before serving."""
        sealed: list[str] = []
        quarantined: list[str] = []
        daemon = Caller.daemon()
        with self.store.read() as rt:
            pending = [(ino, Inode.from_bytes(rt.get_inode(ino) or b"")) for ino in
                       rt.iter_writing()]
        for ino, inode in pending:
            if inode.clean:
                self._seal(ino, self._file_sha256(ino), daemon, "recover_seal")
                sealed.append(str(ino))
            else:
                self._quarantine(ino, daemon)
                quarantined.append(str(ino))
        return {"sealed": sealed, "quarantined": quarantined}

    def _quarantine(
        self, ino: int, caller: Caller,
        reason: str = "writes after the last flush were not acknowledged",
    ) -> None:
        now = self.clock()
        with self.transaction() as (tx, batch):
            inode = Inode.from_bytes(tx.get_inode(ino) or b"")
            for index, key in tx.iter_manifest(ino):  # chunks stored after the last flush
                inode.size = max(inode.size, index * CHUNK_SIZE + len(tx.get_chunk(key) or b""))
            inode.state = State.QUARANTINED
            inode.mode &= ~0o222
            inode.ctime_ns = now
            tx.put_inode(ino, inode.to_bytes())
            tx.set_writing(ino, False)
            tx.add_counter("quarantined", 1)
            batch.add(self.log.stamp(
                "recover_quarantine", path=self._path(tx, ino), ino=ino, size=inode.size,
                reason=reason, **self._who(caller),
            ))

    def open_writers(self) -> int:
        return len(self._writers)

    def has_writer(self, ino: int) -> bool:
        """Whether ``ino`` has a live writable handle (a ``writing`` file without one
        was orphaned by a failed seal and is quarantined at the next start)."""
        return ino in self._writers

    def close(self) -> None:
        """Stop the storer thread (after the last request)."""
        self._storer.close()


def store_stats(store: Store) -> dict[str, Any]:
    """Store-wide counters (kept in the same transactions as the changes they count)."""
    with store.read() as rt:
        logical = rt.get_counter("logical_bytes")
        stored = rt.get_counter("stored_bytes")
        return {
            "files": rt.get_counter("files"),
            "quarantined": rt.get_counter("quarantined"),
            "writing": len(rt.iter_writing()),
            "logical_bytes": logical,
            "stored_bytes": stored,
            "chunks": rt.get_counter("chunks"),
            "dedup_ratio": round(logical / stored, 4) if stored else 1.0,
            "audit_records": rt.get_counter("audit_next_seq"),
            "freed_bytes": rt.get_counter("freed_bytes"),
            "deleted_entries": rt.get_counter("deleted_entries"),
        }


def path_of(txn: ReadTxn, ino: int) -> str:
    """The path of ``ino`` below the mount root, built from parent links."""
    parts: list[bytes] = []
    for _ in range(4096):
        if ino == ROOT_INO:
            break
        raw = txn.get_inode(ino)
        if raw is None:
            break
        inode = Inode.from_bytes(raw)
        parts.append(inode.name)
        ino = inode.parent
    return "/" + b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")


def _change_fields(change: AttrChange) -> dict[str, Any]:
    """The requested changes as record fields (uid/gid renamed: the caller's are there)."""
    rename = {"uid": "new_uid", "gid": "new_gid"}
    return {rename.get(name, name): value for name, value in asdict(change).items()
            if value is not None}


def iso_time(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))

