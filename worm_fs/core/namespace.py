"""Names: lookups, creating entries, renames, attribute changes and outright refusals.

Lookup-style calls (:meth:`lookup`, :meth:`getattr`, :meth:`readdir`, xattrs,
:meth:`statfs`) take no lock and open one short read transaction. :meth:`create` never
waits for I/O: the new file lives in memory until the next commit stores it. ``mkdir``,
``symlink``, ``rename`` and ``setattr`` are committer jobs and return once durable.
mkdir, symlink and rename decide inside the job, where the transaction is the latest
state of the store (a rename's subtree walk for the settle window runs on a snapshot
before the job is queued); ``setattr`` decides on a snapshot, as its rules depend only
on the entry itself and its writer.

A new name is *claimed* (:attr:`_claims`) before it is checked against the store, so
two creators of one name can never both succeed, whichever path each takes.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from worm_fs.audit.log import AuditBatch
from worm_fs.core.base import MIXED_ENTRIES, CoreState
from worm_fs.core.committer import JobFn
from worm_fs.core.handles import WriteHandle
from worm_fs.core.model import AttrChange, Caller, Inode, Kind, State
from worm_fs.core.paths import MAX_DEPTH, NAME_MAX, ROOT_INO, iso_time
from worm_fs.core.policy import Facts, Op, decide, read_bits_for, rename_flags_errno
from worm_fs.core.quota import QuotaExceeded
from worm_fs.core.settle import Survey
from worm_fs.errors import NotFound, WormError
from worm_fs.store import ReadTxn, WriteTxn, u64

#: xattrs every file carries, and the root's extra ones; all start with this.
XATTR_PREFIX = b"user.worm."
XATTR_SHA256 = b"user.worm.sha256"
XATTR_STATE = b"user.worm.state"
XATTR_SEALED_AT = b"user.worm.sealed_at"
XATTR_STATE_DIR = b"user.worm.state_dir"
XATTR_RETAIN = b"user.worm.retain_until"
XATTR_HOLD = b"user.worm.hold"
XATTR_PROVENANCE = b"user.worm.provenance"
#: Set once every directory's ``subdirs`` is counted (at creation for a new store).
SUBDIRS_META = "subdirs_counted"


class NamespaceOps(CoreState):
    """The name half of :class:`~worm_fs.core.fs.WormCore`."""

    def retention_of(self, inode: Inode) -> int:
        """When ``inode``'s own retention ends (ns; 0 = none): the later of a retention
        set on it and, for a sealed file, its seal time plus the mount's retention."""
        until = int(inode.extra.get("retain_until_ns", 0))  # type: ignore[arg-type]
        if inode.kind is Kind.FILE and inode.sealed_ns and self.retention_ns:
            until = max(until, inode.sealed_ns + self.retention_ns)
        return until

    # ------------------------------------------------------------------ lookups
    def lookup(
        self, parent: int, name: bytes, caller: Callable[[], Caller] = Caller.daemon,
    ) -> Inode:
        """The entry ``name`` in ``parent``. A name too long to exist is refused with
        ``ENAMETOOLONG`` (audited, with the process ``caller()`` names): the kernel
        looks a name up before it creates, links, renames or stats it, so this is where
        such a call ends."""
        if len(name) > NAME_MAX:
            self._check_name("lookup", parent, name, caller())
        with self.store.read() as rt:
            child = self._child(rt, parent, name)
            if child is None:
                raise NotFound()
            return self.inode_in(rt, child)

    def getattr(self, ino: int) -> Inode:
        with self.store.read() as rt:
            return self.inode_in(rt, ino)

    def readdir(self, ino: int, *, dots: bool = False) -> list[tuple[bytes, Inode]]:
        """The entries of directory ``ino`` in name order; with ``dots``, after ``.``
        (the directory) and ``..`` (its parent; the root's parent is the root)."""
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
            listing = [(name, self.inode_in(rt, child)) for name, child in sorted(entries.items())]
            if dots:
                listing[:0] = [(b".", inode), (b"..", self.inode_in(rt, inode.parent))]
            return listing

    def readlink(self, ino: int) -> bytes:
        inode = self.getattr(ino)
        if inode.kind is not Kind.SYMLINK:
            raise WormError("not a symlink", errno=errno.EINVAL)
        return inode.target

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            # Every name we serve has the prefix. The kernel asks for
            # security.capability before every write: answer without a lookup.
            raise WormError("no such attribute", errno=errno.ENODATA)
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

    def count_subdirs(self) -> list[str]:
        """Once per store made before directories kept count of their subdirectories
        (for their link count): count them all, in one pass over the inodes and one
        transaction. Before serving; returns the directories counted."""
        with self.store.read() as rt:
            if rt.get_meta(SUBDIRS_META) is not None:
                return []

        def job(tx: WriteTxn, batch: AuditBatch) -> list[str]:
            dirs: list[Inode] = []
            counts: dict[int, int] = {}
            for ino, raw in tx.iter_inodes():
                inode = Inode.from_bytes(raw)
                if inode.kind is Kind.DIR:
                    dirs.append(inode)
                    if ino != ROOT_INO:
                        counts[inode.parent] = counts.get(inode.parent, 0) + 1
            for inode in dirs:
                inode.subdirs = counts.get(inode.ino, 0)
                tx.put_inode(inode.ino, inode.to_bytes())
            tx.put_meta(SUBDIRS_META, b"1")
            return [str(inode.ino) for inode in dirs]

        return self.commit(job)

    # ------------------------------------------------------------------ creating names
    def _parent_for_new(
        self, txn: ReadTxn, parent: int, name: bytes, op: str, caller: Caller
    ) -> str:
        """Check the parent of a new entry; returns the new entry's path."""
        parent_inode = self.inode_in(txn, parent)
        path = self._child_path(txn, parent, name)
        err = decide(Op.CREATE, parent_inode, Facts())
        if err is not None:
            raise self._refuse(op, err, caller, "parent is not a directory", path=path)
        return path

    def _add_entry(
        self, tx: WriteTxn, parent: int, name: bytes, kind: Kind, mode: int, caller: Caller,
        **fields: Any,
    ) -> Inode:
        now = self.clock()
        gid = caller.gid
        if kind is Kind.DIR:  # a directory is sealed from birth: the read policy now
            mode |= read_bits_for(kind, self.seal_read_mode)
            gid = caller.gid if self.seal_gid is None else self.seal_gid
        inode = Inode(
            ino=self._new_ino(tx), kind=kind, mode=mode & 0o7777, uid=caller.uid,
            gid=gid, parent=parent, name=name, atime_ns=now, mtime_ns=now,
            ctime_ns=now, changed_ns=now, born_ns=now, **fields,
        )
        tx.put_inode(inode.ino, inode.to_bytes())
        tx.put_dirent(parent, name, inode.ino)
        tx.put_meta("next_ino", u64(max(inode.ino + 1, tx.get_counter("next_ino"))))
        self.placed(tx, inode, self.touch(tx, parent, now, mtime=True,
                                          subdirs=1 if kind is Kind.DIR else 0))
        return inode

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, caller: Caller
    ) -> tuple[int, Inode]:
        """A new file and its single writable handle; never waits for I/O.

        The new entry is kept in memory (visible to lookups) and stored, with its audit
        record, by the next commit: normally its first flush's, so creating, writing and
        closing a small file costs a share of one synced commit. The group commit stores
        it anyway after :data:`~worm_fs.core.base.UNBORN_MAX_AGE_S`. Like any
        filesystem's, a create is durable once the file is flushed; a crash before that
        loses a file nobody has closed yet.
        """
        self._check_name("create", parent, name, caller)
        self.require_writable("create", caller)
        key = (parent, name)
        with self._lock:
            doomed = parent in self._doomed
            mine = not (doomed or key in self._claims or key in self._unborn_names)
            if mine:
                self._claims.add(key)
        try:
            with self.store.read() as rt:  # begun after the claim: sees any committed name
                if doomed:  # its directory is being deleted by a queued approval
                    raise self._refuse("create", errno.ENOENT, caller,
                                       "the directory is being deleted",
                                       path=self._child_path(rt, parent, name))
                path = self._parent_for_new(rt, parent, name, "create", caller)
                if not mine or rt.get_dirent(parent, name) is not None:
                    raise self._refuse("create", errno.EEXIST, caller, "name exists",
                                       path=path)
                next_ino = rt.get_counter("next_ino") if self._next_ino is None else 0
                quota_keys = self.quotas.keys_for(rt, caller.uid, parent, self.inode_in)
            try:
                self.quotas.charge(quota_keys, files=1)
            except QuotaExceeded as exc:
                raise self._refuse("create", exc.errno, caller, exc.message,
                                   path=path) from None
        except BaseException:
            if mine:
                with self._lock:
                    self._claims.remove(key)
            raise
        now = self.clock()
        with self._lock:
            if self._next_ino is None:
                self._next_ino = next_ino
            inode = Inode(
                ino=self._next_ino, kind=Kind.FILE, mode=mode & 0o7777, uid=caller.uid,
                gid=caller.gid, parent=parent, name=name, atime_ns=now, mtime_ns=now,
                ctime_ns=now, changed_ns=now, born_ns=now, state=State.WRITING, clean=False,
                extra={"writer": {"uid": caller.uid, "gid": caller.gid, "pid": caller.pid,
                                  "comm": caller.comm, "cmdline": list(caller.cmdline)}},
            )
            self._next_ino += 1
            record = self.log.stamp("create", path=path, ino=inode.ino, flags=flags,
                                    mode=inode.mode, **self._who(caller))
            handle = WriteHandle(
                fh=self._next_fh, ino=inode.ino, caller=caller, flags=flags,
                mtime_ns=inode.mtime_ns, quota_keys=quota_keys,
            )
            self._next_fh += 1
            self._unborn[inode.ino] = (inode, record, time.monotonic())
            self._unborn_names[key] = inode.ino
            self._claims.remove(key)
            self._handles[handle.fh] = handle
            self._writers[inode.ino] = handle
        return handle.fh, inode

    def _new_entry(
        self, op: str, parent: int, name: bytes, caller: Caller, kind: Kind, mode: int,
        **fields: Any,
    ) -> Inode:
        """mkdir and symlink: one job that checks, claims and adds the entry."""
        self._check_name(op, parent, name, caller)
        self.require_writable(op, caller)

        def job(tx: WriteTxn, batch: AuditBatch) -> Inode:
            path = self._parent_for_new(tx, parent, name, op, caller)
            if not self._claim_in_job(tx, parent, name):
                raise self._refuse(op, errno.EEXIST, caller, "name exists", path=path)
            inode = self._add_entry(tx, parent, name, kind, mode, caller, **fields)
            details: dict[str, Any] = {"mode": inode.mode} if kind is Kind.DIR else {
                "target": inode.target.decode("utf-8", "surrogateescape")}
            batch.add(self.log.stamp(op, path=path, ino=inode.ino, **details,
                                     **self._who(caller)))
            return inode

        return self.commit(job)

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> Inode:
        return self._new_entry("mkdir", parent, name, caller, Kind.DIR, mode)

    def symlink(self, parent: int, name: bytes, target: bytes, caller: Caller) -> Inode:
        return self._new_entry("symlink", parent, name, caller, Kind.SYMLINK, 0o777,
                               size=len(target), target=target)

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
            not_empty = op is Op.RMDIR and inode.kind is Kind.DIR and self._has_entries(
                rt, child)
            facts = self._facts(rt, op, inode, caller, not_empty=not_empty)
        self._check(op, audit_op, inode, facts, caller, path, **fields)
        raise AssertionError(f"policy allowed {op}")  # the table never allows these

    def _has_entries(self, txn: ReadTxn, ino: int) -> bool:
        """Whether directory ``ino`` has an entry: stored, or created but not yet stored
        (or stored by a commit newer than ``txn``)."""
        for _ in txn.iter_dirents(ino):
            return True
        recent = [*self._unborn_names.copy(), *self._born_names.copy()]  # copy(): no lock
        return any(parent == ino for parent, _ in recent)

    def unlink(self, parent: int, name: bytes, caller: Caller) -> None:
        self._refuse_entry(Op.UNLINK, "unlink", parent, name, caller)

    def rmdir(self, parent: int, name: bytes, caller: Caller) -> None:
        self._refuse_entry(Op.RMDIR, "rmdir", parent, name, caller)

    def link(self, ino: int, new_parent: int, new_name: bytes, caller: Caller) -> None:
        self._check_name("link", new_parent, new_name, caller)
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)
            new_path = self._child_path(rt, new_parent, new_name)
        self._check(Op.LINK, "link", inode, Facts(), caller, path, new_path=new_path)

    def mknod(self, parent: int, name: bytes, mode: int, caller: Caller) -> None:
        self._check_name("mknod", parent, name, caller)
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
    #: Surveys redone at most when entries keep arriving under a directory being renamed.
    RENAME_ATTEMPTS = 4

    def rename(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int,
        caller: Caller, *, exchange: bool = False,
    ) -> None:
        """Move an entry to a free name (a committer job: decided on the latest state).

        A directory's subtree is surveyed on a snapshot, not inside the job: the
        committer must not stall every writer behind a large walk. The job then checks
        that nothing was placed under another creator's directory since (the
        ``mixed_entries`` counter) and that no such file is being created in a surveyed
        directory; if either happened, the survey is redone.
        """
        err = rename_flags_errno(flags)
        if err is not None:  # an argument error: before the name, failsafe and policy
            with self.store.read() as rt:
                paths = {"path": self._child_path(rt, old_parent, old_name),
                         "new_path": self._child_path(rt, new_parent, new_name[:NAME_MAX])}
            raise self._refuse("rename", err, caller, f"unsupported rename flags {flags:#x}",
                               **paths, flags=flags)
        self._check_name("rename", new_parent, new_name, caller)
        self.require_writable("rename", caller)
        for _ in range(self.RENAME_ATTEMPTS):
            with self.store.read() as rt:
                seen = self._child(rt, old_parent, old_name)
                below = None if seen is None else self._survey(
                    rt, Op.RENAME, self.inode_in(rt, seen), caller)
                mixed = rt.get_counter(MIXED_ENTRIES)
            if self.commit(self._rename_job(old_parent, old_name, new_parent, new_name, flags,
                                            caller, exchange, seen, below, mixed)):
                return
        with self.store.read() as rt:
            path = self._child_path(rt, old_parent, old_name)
        raise self._refuse("rename", errno.EBUSY, caller, "entries kept arriving below it "
                           "while the rename was checked; try again", path=path)

    def _rename_job(
        self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int,
        caller: Caller, exchange: bool, seen: int | None, below: Survey | None, mixed: int,
    ) -> JobFn:
        def job(tx: WriteTxn, batch: AuditBatch) -> bool:
            """False: the survey is stale (nothing changed, nothing recorded)."""
            path = self._child_path(tx, old_parent, old_name)
            new_path = self._child_path(tx, new_parent, new_name)
            paths = {"path": path, "new_path": new_path, "flags": flags}
            child = tx.get_dirent(old_parent, old_name)
            if child is None:
                raise self._refuse("rename", errno.ENOENT, caller, "no such entry", **paths)
            inode = self.inode_in(tx, child)
            if exchange or not self._claim_in_job(tx, new_parent, new_name):
                self._check(Op.RENAME_OVER, "rename", inode, Facts(), caller, **paths)
            # Argument errors before the policy's (settle window) refusal.
            dest = self.inode_in(tx, new_parent)
            if dest.kind is not Kind.DIR:
                raise self._refuse("rename", errno.ENOTDIR, caller, "not a directory", **paths)
            if new_parent != old_parent and self.quotas.trees and (
                    self.quotas.trees_of(tx, old_parent, self.inode_in)
                    != self.quotas.trees_of(tx, new_parent, self.inode_in)):
                raise self._refuse("rename", errno.EXDEV, caller,
                                   "it would move between directory quotas", **paths)
            if inode.kind is Kind.DIR and self._is_under(tx, new_parent, inode.ino):
                raise self._refuse("rename", errno.EINVAL, caller,
                                   "cannot move a directory into itself", **paths)
            if below is not None and (child != seen or tx.get_counter(MIXED_ENTRIES) != mixed
                                      or self._foreign_unborn(below.dirs, inode.uid)):
                return False
            facts = self._facts(tx, Op.RENAME, inode, caller, below=below or Survey(
                closed="it changed while the rename was checked; try again"))
            self._check(Op.RENAME, "rename", inode, facts, caller, **paths)
            now = self.clock()
            self.forget_recent(inode.ino)
            tx.delete_dirent(old_parent, old_name)
            tx.put_dirent(new_parent, new_name, inode.ino)
            stored = Inode.from_bytes(tx.get_inode(inode.ino) or b"")
            stored.parent, stored.name, stored.ctime_ns = new_parent, new_name, now
            tx.put_inode(inode.ino, stored.to_bytes())
            moved = 1 if inode.kind is Kind.DIR and new_parent != old_parent else 0
            self.touch(tx, old_parent, now, mtime=True, subdirs=-moved)
            moved_to = self.touch(tx, new_parent, now, mtime=True, subdirs=moved) \
                if new_parent != old_parent else None
            self.placed(tx, stored, moved_to)
            batch.add(self.log.stamp("rename", ino=inode.ino, **paths, **self._who(caller)))
            return True

        return job

    def _foreign_unborn(self, dirs: frozenset[int], uid: int) -> bool:
        """Whether a file of another creator is being created in one of ``dirs``."""
        with self._lock:
            unborn = [inode for inode, _, _ in self._unborn.values()]
        return any(inode.parent in dirs and inode.uid != uid for inode in unborn)

    def _is_under(self, txn: ReadTxn, ino: int, ancestor: int) -> bool:
        for _ in range(MAX_DEPTH):
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.inode_in(txn, ino).parent
        return False

    # ------------------------------------------------------------------ setattr
    def setattr(self, ino: int, change: AttrChange, fh: int | None, caller: Caller) -> Inode:
        """Times, mode, owner (as allowed by the settle window) and, through the writer,
        size. A committer job; returns the new attributes once durable."""
        self.require_writable("setattr", caller, ino=ino)
        writer = self._writers.get(ino)
        via_writer = writer is not None and fh == writer.fh
        fields = _change_fields(change)
        with self.store.read() as rt:
            inode = self.inode_in(rt, ino)
            path = self._path(rt, ino)

            def check(op: Op, audit_op: str, **extra: bool) -> None:
                facts = self._facts(rt, op, inode, caller, via_writer=via_writer, **extra)
                self._check(op, audit_op, inode, facts, caller, path, **fields)

            if change.size is not None:
                check(Op.TRUNCATE, "truncate")
            if change.mode is not None:
                check(Op.CHMOD, "chmod")
            if change.uid is not None or change.gid is not None:
                check(Op.CHOWN, "chown", is_noop=change.uid in (None, inode.uid)
                      and change.gid in (None, inode.gid))
            if change.atime_ns is not None or change.mtime_ns is not None:
                check(Op.UTIMES, "utimes")
        truncating = change.size is not None and writer is not None
        snap: Any = None

        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            # The stored record, not the writer's view: its size is what is stored.
            stored = self._store_snapshot(tx, snap, clean=False) if snap is not None \
                else Inode.from_bytes(tx.get_inode(ino) or b"")
            if change.mode is not None:
                mode = change.mode & 0o7777
                if stored.kind is Kind.FILE and stored.state is not State.WRITING:
                    mode &= ~0o222  # write bits never come back once sealed
                if stored.kind is Kind.DIR or stored.state is State.SEALED:
                    # nor does read access granted by the policy or a share go away
                    mode |= read_bits_for(stored.kind, self.seal_read_mode | int(
                        stored.extra.get("shared", 0)))  # type: ignore[arg-type]
                stored.mode = mode
            if change.atime_ns is not None:
                stored.atime_ns = change.atime_ns
            if change.mtime_ns is not None:
                stored.mtime_ns = change.mtime_ns
            stored.ctime_ns = self.clock()
            tx.put_inode(ino, stored.to_bytes())
            batch.add(self.log.stamp(
                "setattr", path=path, ino=ino, applied_mode=stored.mode, **fields,
                **self._who(caller),
            ))

        if truncating:
            assert writer is not None and change.size is not None
            with writer.flush_lock:  # queued in snapshot order, like a flush
                snap = self._snapshot(writer, truncate_to=change.size)
                ticket = self.committer.submit(job, nbytes=snap.nbytes)
        else:
            ticket = self.committer.submit(job)
        try:
            ticket.wait()
        except BaseException:
            if snap is not None:
                self._snapshot_failed(snap)
            raise
        if snap is not None:
            self._retire_snapshot(snap, marked_dirty=True)
        if writer is not None and change.mtime_ns is not None:
            with writer.guard:
                writer.mtime_ns = change.mtime_ns
        return self.getattr(ino)


def _change_fields(change: AttrChange) -> dict[str, Any]:
    """The requested changes as record fields (uid/gid renamed: the caller's are there)."""
    rename = {"uid": "new_uid", "gid": "new_gid"}
    return {rename.get(name, name): value for name, value in asdict(change).items()
            if value is not None}


__all__ = ["NamespaceOps"]
