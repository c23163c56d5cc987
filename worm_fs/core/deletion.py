"""The only way anything leaves the store: request, approval by another admin, execution.

Contract:

* Identities (:class:`~worm_fs.core.model.Caller`) come from the control channel's
  ``SO_PEERCRED``; nothing a message claims about its sender is used.
* An approval is checked and executed in **one** committer job (one transaction): the names go, the
  reference counts drop, chunks no other file references are freed, and the audit
  records of the decision and of every removed entry commit with it.
* Refusals are audited like every other refusal and raised as
  :class:`~worm_fs.errors.Refused` (or NotFound).
* Time for retention and expiry comes from :func:`trusted_now`, which never goes back:
  setting the system clock back does not shorten a retention period.
"""

from __future__ import annotations

import errno
import hashlib
import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from worm_fs.core.clock import advance_clock, trusted_now
from worm_fs.core.fs import WormCore
from worm_fs.core.layout import chunk_length
from worm_fs.core.model import Caller, Inode, Kind, State
from worm_fs.core.paths import ROOT_INO, iso_time, path_of
from worm_fs.core.policy import SHAREABLE_BITS, read_bits_for
from worm_fs.core.quota import (
    LIMIT_PREFIX,
    USED_PREFIX,
    add_durable,
    counted_usage,
    meta_name,
)
from worm_fs.core.quota_admin import QuotaAdmin
from worm_fs.core.throttle import RequestLimiter
from worm_fs.errors import NoSpace, NotFound, Refused, UsageError
from worm_fs.store import ReadTxn, WriteTxn, release_chunk

#: What a request asks for. Deletions, and retention or holds on a directory (which
#: cover everything below it), need a second admin's approval.
KINDS = ("delete", "retain", "hold")


@dataclass
class DeletionRequest:
    id: str
    state: str  # pending, approved, rejected, expired
    path: str
    ino: int
    requester_uid: int
    requester_pid: int
    requester_comm: str
    reason: str
    created_ns: int
    expires_ns: int
    files: int
    entries: int
    logical_bytes: int
    bytes_freed: int
    decided_by_uid: int | None = None
    decision_reason: str = ""
    decided_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: One of :data:`KINDS`; retain requests carry ``extra["until_ns"]``.
    kind: str = "delete"

    def op(self, verb: str) -> str:
        """The audit op of ``verb`` for this kind: ``delete_approve``, ``retain_request``..."""
        return f"{self.kind}_{verb}"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeletionRequest:
        return cls(**json.loads(raw))

    def shown_state(self, now: int) -> str:
        return "expired" if self.state == "pending" and now >= self.expires_ns else self.state


#: The longest retention anyone can set, from now (100 years, as SnapLock caps it).
MAX_RETENTION_DAYS = 36_525.0
#: Requests one uid may have pending at once (root: no limit).
MAX_PENDING_PER_UID = 16
#: New requests per uid: a burst of this many, then one per ``REQUEST_INTERVAL_S``.
REQUEST_BURST = 4
REQUEST_INTERVAL_S = 2.0
#: Entries one request may cover; a larger tree is refused at once (request its parts).
MAX_REQUEST_ENTRIES = 100_000


class TooLarge(Exception):
    """A walk passed :data:`MAX_REQUEST_ENTRIES`."""


@dataclass(frozen=True)
class Coverage:
    """What a request covers, as of one transaction."""

    entries: list[tuple[int, Inode]]  # post-order: children before their directory
    files: int
    logical_bytes: int
    bytes_freed: int


class Deletions:
    """Deletion requests, decisions, legal holds and retention over one core."""

    def __init__(
        self, core: WormCore, *, admin_gids: frozenset[int] = frozenset(),
        request_ttl_s: float = 7 * 86_400, make_room: Callable[[], bool] = lambda: False,
        max_retention_days: float = MAX_RETENTION_DAYS,
    ) -> None:
        self.core = core
        self.make_room = make_room
        self.admin_gids = admin_gids
        self.request_ttl_ns = int(request_ttl_s * 1e9)
        self.max_retention_days = max_retention_days
        self.max_retention_ns = int(max_retention_days * 86_400 * 1e9)
        self.limiter = RequestLimiter(REQUEST_BURST, REQUEST_INTERVAL_S)
        self.quotas = QuotaAdmin(self)
        self._walking = threading.Lock()
        self.max_pending = MAX_PENDING_PER_UID

    # ------------------------------------------------------------------ helpers
    def is_admin(self, who: Caller) -> bool:
        return who.uid == 0 or bool(({who.gid} | set(who.groups)) & self.admin_gids)

    def _refuse(self, op: str, err: int, who: Caller, why: str, **fields: Any) -> Refused:
        self.core.log.note(self.core.log.stamp(
            op, err, reason=why, uid=who.uid, gid=who.gid, pid=who.pid, comm=who.comm, **fields
        ))
        return Refused(why, errno=err)

    def _require_admin(self, op: str, who: Caller, **fields: Any) -> None:
        if not self.is_admin(who):
            raise self._refuse(op, errno.EPERM, who, "only an admin may do this", **fields)

    def resolve(self, txn: ReadTxn, path: str) -> int:
        """The inode at ``path`` (relative to the mount root, e.g. ``/runs/a``)."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UsageError("paths may not contain '..'")
        ino = ROOT_INO
        for part in parts:
            child = txn.get_dirent(ino, part.encode("utf-8", "surrogateescape"))
            if child is None:
                raise NotFound(f"{path}: no such file or directory")
            ino = child
        return ino

    def _can_see(self, txn: ReadTxn, ino: int, who: Caller) -> bool:
        """Whether ``who`` may traverse every directory above ``ino``."""
        if who.uid == 0:
            return True
        groups = {who.gid} | set(who.groups)
        inode = self.core.inode_in(txn, ino)
        while True:
            parent = self.core.inode_in(txn, inode.parent)
            if parent.uid == who.uid:
                bit = 0o100
            elif parent.gid in groups:
                bit = 0o010
            else:
                bit = 0o001
            if not parent.mode & bit:
                return False
            if parent.ino == ROOT_INO:
                return True
            inode = parent

    def _coverage(self, txn: ReadTxn, ino: int) -> Coverage:
        """Everything a request for ``ino`` covers (raises :class:`TooLarge` past
        :data:`MAX_REQUEST_ENTRIES`). A sealed file's chunk lengths follow from its
        size (its layout is canonical), so only other files' chunks are read."""
        entries: list[tuple[int, Inode]] = []
        todo: list[tuple[int, bool]] = [(ino, False)]
        while todo:  # post-order without recursion: a deep tree must not overflow
            n, expanded = todo.pop()
            inode = self.core.inode_in(txn, n)
            if inode.kind is Kind.DIR and not expanded:
                todo.append((n, True))
                todo.extend((child, False) for _, child in txn.iter_dirents(n))
                continue
            entries.append((n, inode))
            if len(entries) > MAX_REQUEST_ENTRIES:
                raise TooLarge
        refs: Counter[bytes] = Counter()
        lengths: dict[bytes, int] = {}
        files = logical = 0
        for n, inode in entries:
            if inode.kind is Kind.FILE:
                files += 1
                logical += inode.size
                for index, key in txn.iter_manifest(n):
                    refs[key] += 1
                    if inode.state is State.SEALED and inode.layout:
                        lengths[key] = chunk_length(inode.size, index)
        freed = 0
        for key, count in refs.items():
            if txn.get_ref(key) <= count:
                freed += lengths[key] if key in lengths else (txn.chunk_size(key) or 0)
        return Coverage(entries, files, logical, freed)

    def retained_until(self, txn: ReadTxn, ino: int) -> int:
        """The latest retention over ``ino`` and its ancestors (0 = none)."""
        until = 0
        for n in self._lineage(txn, ino):
            until = max(until, self.core.retention_of(self.core.inode_in(txn, n)))
        return until

    def _lineage(self, txn: ReadTxn, ino: int) -> list[int]:
        chain = [ino]
        while chain[-1] != ROOT_INO and len(chain) < 4096:
            chain.append(self.core.inode_in(txn, chain[-1]).parent)
        return chain

    def _load(self, txn: ReadTxn, request_id: str) -> DeletionRequest:
        raw = txn.get_deletion(request_id.encode())
        if raw is None:
            raise NotFound(f"no deletion request {request_id}")
        return DeletionRequest.from_bytes(raw)

    # ------------------------------------------------------------------ requests
    def _limit(self, op: str, who: Caller, path: str) -> None:
        """Refuse a request over its uid's rate or pending cap (root is not limited)."""
        if who.uid == 0:
            return
        if not self.limiter.take(who.uid):
            why = (f"too many requests: at most {REQUEST_BURST} at once, then one every "
                   f"{REQUEST_INTERVAL_S:g} s")
        elif self._pending_of(who.uid) >= self.max_pending:
            why = (f"you have {self.max_pending} pending requests already; wait for a "
                   "decision or for them to expire")
        else:
            return
        raise self._refuse_flood(op, who, why, path=path)

    def _refuse_flood(self, op: str, who: Caller, why: str, **fields: Any) -> Refused:
        """An EAGAIN refusal, recorded at most once per uid and second."""
        suppressed = self.limiter.should_record(who.uid)
        if suppressed is not None:
            self.core.log.note(self.core.log.stamp(
                op, errno.EAGAIN, reason=why, uid=who.uid, gid=who.gid, pid=who.pid,
                comm=who.comm, **({"suppressed": suppressed} if suppressed else {}), **fields))
        return Refused(why, errno=errno.EAGAIN)

    def _pending_of(self, uid: int, txn: ReadTxn | None = None) -> int:
        if txn is None:
            with self.core.store.read() as rt:
                return self._pending_of(uid, rt)
        now = trusted_now(txn, self.core.clock())
        return sum(1 for _, raw in txn.iter_deletions()
                   if (r := DeletionRequest.from_bytes(raw)).requester_uid == uid
                   and r.shown_state(now) == "pending")

    def request(self, path: str, reason: str, who: Caller) -> DeletionRequest:
        if not reason.strip():
            raise UsageError("a reason is required")
        self.core.require_writable("delete_request", who, path=path)
        self._limit("delete_request", who, path)
        # The subtree is walked on a snapshot, outside the commit pipeline; approval
        # checks again that the request still covers exactly these entries.
        with self.core.store.read() as rt:
            try:
                ino = self.resolve(rt, path)
            except NotFound:
                raise self._refuse("delete_request", errno.ENOENT, who, "no such entry",
                                   path=path) from None
            if ino == ROOT_INO:
                raise self._refuse("delete_request", errno.EPERM, who,
                                   "the mount root cannot be deleted", path=path)
            if not self._can_see(rt, ino, who):
                raise self._refuse("delete_request", errno.EACCES, who,
                                   "you cannot see this path", path=path)
            try:
                with self._walking:  # one walk at a time: the rest of the store keeps the CPU
                    cover = self._coverage(rt, ino)
            except TooLarge:
                raise self._refuse("delete_request", errno.E2BIG, who,
                                   f"it covers more than {MAX_REQUEST_ENTRIES} entries: "
                                   "request its parts one by one", path=path) from None
            where = path_of(rt, ino)

        return self._new_request("delete", where, ino, reason, who, cover)

    def _new_request(
        self, kind: str, where: str, ino: int, reason: str, who: Caller,
        cover: Coverage | None = None, **extra: Any,
    ) -> DeletionRequest:
        """Store a pending request (a committer job) and record it."""
        def job(tx: WriteTxn, batch: Any) -> DeletionRequest:
            if who.uid != 0 and self._pending_of(who.uid, tx) >= self.max_pending:
                raise self._refuse_flood(f"{kind}_request", who, "you have "
                                         f"{self.max_pending} pending requests already",
                                         path=where)
            now = advance_clock(tx, self.core.clock())
            req = DeletionRequest(
                id=secrets.token_hex(6), state="pending", path=where, ino=ino,
                requester_uid=who.uid, requester_pid=who.pid, requester_comm=who.comm,
                reason=reason, created_ns=now, expires_ns=now + self.request_ttl_ns,
                files=cover.files if cover else 0,
                entries=len(cover.entries) if cover else 0,
                logical_bytes=cover.logical_bytes if cover else 0,
                bytes_freed=cover.bytes_freed if cover else 0, kind=kind, extra=dict(extra),
            )
            fields: dict[str, Any] = {}
            if cover is not None:
                req.extra["entries_digest"] = _entries_digest(cover)
                fields = {"files": req.files, "bytes_freed": req.bytes_freed}
            if "until_ns" in extra:
                fields["until"] = iso_time(extra["until_ns"])
            tx.put_deletion(req.id.encode(), req.to_bytes())
            batch.add(self.core.log.stamp(
                req.op("request"), request_id=req.id, path=req.path, ino=ino, reason=reason,
                **fields, uid=who.uid, gid=who.gid, pid=who.pid, comm=who.comm,
            ))
            return req

        return self.core.commit(job)

    def list(self) -> list[tuple[DeletionRequest, str]]:
        """Every request with its state as of now (pending ones past expiry: expired)."""
        with self.core.store.read() as rt:
            now = trusted_now(rt, self.core.clock())
            reqs = [DeletionRequest.from_bytes(raw) for _, raw in rt.iter_deletions()]
        reqs.sort(key=lambda r: r.created_ns)
        return [(r, r.shown_state(now)) for r in reqs]

    def reject(self, request_id: str, who: Caller, reason: str) -> DeletionRequest:
        if not reason.strip():
            raise UsageError("a reason is required")
        self._require_admin("delete_reject", who, request_id=request_id)
        self.core.require_writable("delete_reject", who, request_id=request_id)

        def job(tx: WriteTxn, batch: Any) -> DeletionRequest:
            req = self._load(tx, request_id)
            now = advance_clock(tx, self.core.clock())
            if req.shown_state(now) != "pending":
                raise self._refuse(req.op("reject"), errno.EPERM, who,
                                   f"request is {req.shown_state(now)}", request_id=request_id)
            req.state, req.decided_by_uid = "rejected", who.uid
            req.decision_reason, req.decided_ns = reason, now
            tx.put_deletion(req.id.encode(), req.to_bytes())
            batch.add(self.core.log.stamp(
                req.op("reject"), request_id=req.id, path=req.path, reason=reason,
                uid=who.uid, gid=who.gid, pid=who.pid, comm=who.comm,
            ))
            return req

        return self.core.commit(job)

    def approve(
        self, request_id: str, who: Caller, reason: str = ""
    ) -> tuple[DeletionRequest, list[tuple[int, bytes, int]]]:
        """Approve and execute. Returns the request and the (parent, name, ino) removed.

        On a full disk the space reserve is released and the approval tried once more.
        """
        self._require_admin("delete_approve", who, request_id=request_id)
        self.core.require_writable("delete_approve", who, request_id=request_id)
        try:
            return self._approve(request_id, who, reason)
        except NoSpace:
            if not self.make_room():
                raise
            return self._approve(request_id, who, reason)

    def _approve(
        self, request_id: str, who: Caller, reason: str
    ) -> tuple[DeletionRequest, list[tuple[int, bytes, int]]]:
        def job(
            tx: WriteTxn, batch: Any
        ) -> tuple[DeletionRequest, list[tuple[int, bytes, int]] | None]:
            req = self._load(tx, request_id)
            now = advance_clock(tx, self.core.clock())
            fields = {"request_id": req.id, "path": req.path}
            state = req.shown_state(now)
            if state == "expired" and req.state == "pending":
                req.state = "expired"
                tx.put_deletion(req.id.encode(), req.to_bytes())
                batch.add(self.core.log.stamp(req.op("expire"), **fields))
                return req, None  # refused below, once the expiry is recorded
            if state != "pending":
                raise self._refuse(req.op("approve"), errno.EPERM, who,
                                   f"request is {state}", **fields)
            if who.uid == req.requester_uid:
                raise self._refuse(req.op("approve"), errno.EPERM, who,
                                   "the approver must not be the requester", **fields)
            if req.kind == "delete":
                return req, self._execute(tx, batch, req, who, now, reason)
            self._apply(tx, batch, req, who, now, reason)
            return req, []

        req, removed = self.core.commit(job)
        if removed is None:
            raise self._refuse("delete_approve", errno.EPERM, who, "request is expired",
                               request_id=request_id)
        return req, removed

    def _execute(
        self, tx: WriteTxn, batch: Any, req: DeletionRequest, who: Caller, now: int, reason: str
    ) -> list[tuple[int, bytes, int]]:
        fields = {"request_id": req.id, "path": req.path}
        raw = tx.get_inode(req.ino)
        if raw is None or path_of(tx, req.ino) != req.path:
            raise self._refuse("delete_approve", errno.ENOENT, who,
                               "the requested entry no longer exists at that path", **fields)
        try:
            cover = self._coverage(tx, req.ino)
        except TooLarge:
            raise self._refuse("delete_approve", errno.E2BIG, who,
                               f"{req.path} now holds more than {MAX_REQUEST_ENTRIES} "
                               "entries", **fields) from None
        if req.extra.get("entries_digest") not in (None, _entries_digest(cover)):
            raise self._refuse(
                "delete_approve", errno.EPERM, who,
                f"{req.path} changed since the request ({req.entries} entries then, "
                f"{len(cover.entries)} now); request again so the approver sees what goes",
                **fields)
        for n, inode in cover.entries:
            if (inode.kind is Kind.FILE and inode.state is State.WRITING
                    and self.core.has_writer(n)):
                raise self._refuse("delete_approve", errno.EBUSY, who,
                                   f"{path_of(tx, n)} is still being written", **fields)
        # A file created in one of these directories but not yet stored is not in the
        # transaction; refuse while one exists, and keep new ones out until it commits.
        if not self.core._doom_in_job({n for n, i in cover.entries if i.kind is Kind.DIR}):
            raise self._refuse("delete_approve", errno.EBUSY, who,
                               f"a file is being created in {req.path}", **fields)
        for n in [n for n, _ in cover.entries] + self._lineage(tx, req.ino)[1:]:
            hold = self.core.inode_in(tx, n).extra.get("hold")
            if hold:
                raise self._refuse("delete_approve", errno.EPERM, who,
                                   f"{path_of(tx, n)} is under legal hold", **fields)
        until = max([self.retained_until(tx, req.ino)]
                    + [self.core.retention_of(i) for _, i in cover.entries])
        if until > now:
            raise self._refuse("delete_approve", errno.EPERM, who,
                               f"retained until {iso_time(until)}", **fields)

        batch.add(self.core.log.stamp(
            "delete_approve", reason=reason or None, uid=who.uid, gid=who.gid, pid=who.pid,
            comm=who.comm, requester_uid=req.requester_uid, **fields,
        ))
        removed: list[tuple[int, bytes, int]] = []
        freed = 0
        quotas = self.core.quotas
        keys_in: dict[int, list[tuple[str, int]]] = {}  # parent -> its trees' keys
        for n, inode in cover.entries:
            path = path_of(tx, n)
            usage = counted_usage(inode)
            if usage is not None:  # the parent is still there: children go first
                if inode.parent not in keys_in:
                    keys_in[inode.parent] = [("tree", t) for t in quotas.trees_of(
                        tx, inode.parent, self.core.inode_in)]
                keys = [("uid", inode.uid), *keys_in[inode.parent]]
                add_durable(tx, keys, -usage.bytes, -usage.files)
                # In memory at once: a failed commit leaves the store failsafe, and the
                # next start reads the durable numbers again.
                quotas.charge(keys, nbytes=-usage.bytes, files=-usage.files)
            if inode.kind is Kind.DIR and ("tree", n) in quotas.limits:
                for prefix in (LIMIT_PREFIX, USED_PREFIX):
                    tx.raw_delete("meta", meta_name(prefix, ("tree", n)).encode())
                quotas.forget_tree(n)
            if inode.kind is Kind.FILE:
                for index, key in list(tx.iter_manifest(n)):
                    freed += release_chunk(tx, key)
                    tx.delete_manifest(n, index)
                if inode.state is State.SEALED:
                    tx.add_counter("files", -1)
                    tx.add_counter("logical_bytes", -inode.size)
                elif inode.state is State.QUARANTINED:
                    tx.add_counter("quarantined", -1)
            tx.delete_dirent(inode.parent, inode.name)
            self.core.forget_recent(n)
            tx.set_writing(n, False)  # an orphaned "writing" file must leave recovery's index
            tx.delete_inode(n)
            removed.append((inode.parent, inode.name, n))
            batch.add(self.core.log.stamp(
                "delete", path=path, ino=n, kind=inode.kind.value, size=inode.size,
                sha256=inode.sha256 or None, request_id=req.id,
            ))
        tx.add_counter("freed_bytes", freed)
        tx.add_counter("deleted_entries", len(removed))
        req.state, req.decided_by_uid, req.decided_ns = "approved", who.uid, now
        req.decision_reason = reason
        req.extra["bytes_freed_actual"] = freed
        tx.put_deletion(req.id.encode(), req.to_bytes())
        target = cover.entries[-1][1]  # the walk lists the requested entry last
        self.core.touch(tx, target.parent, now, mtime=True,
                        subdirs=-1 if target.kind is Kind.DIR else 0)
        return removed

    # ------------------------------------------------------------------ holds, retention
    def hold_set(self, path: str, who: Caller, reason: str) -> DeletionRequest | None:
        """A hold on a file applies at once; on a directory (everything below it) it is
        requested, for another admin to approve. Returns the request, if one."""
        if not reason.strip():
            raise UsageError("a reason is required")
        self._require_admin("hold_set", who, path=path)
        self.core.require_writable("hold_set", who, path=path)
        with self.core.store.read() as rt:
            ino, inode, where = self._target(rt, "hold_set", path, who)
        if inode.kind is Kind.DIR:
            self._limit("hold_request", who, where)
            return self._new_request("hold", where, ino, reason, who)
        self.core.commit(lambda tx, batch: self._set_hold(tx, batch, ino, who, reason))
        return None

    def hold_clear(self, path: str, who: Caller) -> None:
        """Clearing a hold needs one admin: it only lets deletions be requested again,
        and every deletion still needs two people."""
        self._require_admin("hold_clear", who, path=path)
        self.core.require_writable("hold_clear", who, path=path)

        def job(tx: WriteTxn, batch: Any) -> None:
            ino = self.resolve(tx, path)
            stored = Inode.from_bytes(tx.get_inode(ino) or b"")
            stored.extra.pop("hold", None)
            tx.put_inode(ino, stored.to_bytes())
            batch.add(self.core.log.stamp(
                "hold_clear", path=path_of(tx, ino), ino=ino, uid=who.uid, gid=who.gid,
                pid=who.pid, comm=who.comm,
            ))

        self.core.commit(job)

    def retain(self, path: str, who: Caller, until_ns: int,
               reason: str = "") -> DeletionRequest | None:
        """Extend retention to ``until_ns``: at once on a file, as a request for another
        admin to approve on a directory. Never shorter than now, never beyond
        ``max_retention_days`` from now. Returns the request, if one."""
        self._require_admin("retain", who, path=path)
        self.core.require_writable("retain", who, path=path)
        with self.core.store.read() as rt:
            ino, inode, where = self._target(rt, "retain", path, who)
            self._check_retention("retain", who, rt, inode, until_ns, where)
        if inode.kind is Kind.DIR:
            self._limit("retain_request", who, where)
            return self._new_request("retain", where, ino,
                                     reason or f"retain until {iso_time(until_ns)}", who,
                                     until_ns=until_ns)
        self.core.commit(lambda tx, batch: self._set_retention(tx, batch, ino, who, until_ns))
        return None

    def _target(self, txn: ReadTxn, op: str, path: str, who: Caller) -> tuple[int, Inode, str]:
        try:
            ino = self.resolve(txn, path)
        except NotFound:
            raise self._refuse(op, errno.ENOENT, who, "no such entry", path=path) from None
        return ino, self.core.inode_in(txn, ino), path_of(txn, ino)

    def _check_retention(
        self, op: str, who: Caller, txn: ReadTxn, inode: Inode, until_ns: int, where: str,
        **fields: Any,
    ) -> None:
        now = trusted_now(txn, self.core.clock())
        current = self.core.retention_of(inode)
        if until_ns < current:
            why = f"retention can only be extended (now until {iso_time(current)})"
        elif until_ns > now + self.max_retention_ns:
            why = (f"retention beyond {iso_time(now + self.max_retention_ns)} exceeds the "
                   f"maximum of {self.max_retention_days:g} days (--max-retention)")
        else:
            return
        raise self._refuse(op, errno.EPERM, who, why, path=where, until=iso_time(until_ns),
                           **fields)

    def _set_retention(self, tx: WriteTxn, batch: Any, ino: int, who: Caller, until_ns: int,
                       decider: Caller | None = None, **fields: Any) -> None:
        """Set it, checked again now; a refusal names ``decider`` (an approver) if given."""
        stored = Inode.from_bytes(tx.get_inode(ino) or b"")
        self._check_retention("retain", decider or who, tx, stored, until_ns, path_of(tx, ino),
                              **fields)
        stored.extra["retain_until_ns"] = until_ns
        tx.put_inode(ino, stored.to_bytes())
        batch.add(self.core.log.stamp(
            "retain", path=path_of(tx, ino), ino=ino, until=iso_time(until_ns), **fields,
            uid=who.uid, gid=who.gid, pid=who.pid, comm=who.comm,
        ))

    def _set_hold(self, tx: WriteTxn, batch: Any, ino: int, who: Caller, reason: str,
                  **fields: Any) -> None:
        stored = Inode.from_bytes(tx.get_inode(ino) or b"")
        stored.extra["hold"] = {"reason": reason, "by_uid": who.uid, **fields}
        tx.put_inode(ino, stored.to_bytes())
        batch.add(self.core.log.stamp(
            "hold_set", path=path_of(tx, ino), ino=ino, reason=reason, **fields,
            uid=who.uid, gid=who.gid, pid=who.pid, comm=who.comm,
        ))

    # ------------------------------------------------------------------ read access
    def share(self, path: str, who: Caller, mode: int, *,
              recursive: bool = False) -> dict[str, Any]:
        """Add read access to ``path`` (with ``recursive``, to everything below it too):
        files get the read bits of ``mode``, directories those with the matching search
        bits (:func:`~worm_fs.core.policy.read_bits_for`). One admin, one committer job,
        one ``share`` record per entry whose mode changes (the named entry always gets
        one). Never removes a bit; a mode with any bit but read and search is refused.
        Files still being written are skipped below a directory and refused alone:
        share them once sealed. Returns what changed; ``_changed`` lists the inodes
        whose cached attributes the kernel must drop."""
        fields: dict[str, Any] = {"path": path, "requested_mode": f"{mode:04o}",
                                  "recursive": recursive}
        self._require_admin("share", who, **fields)
        if mode & ~SHAREABLE_BITS or not mode:
            raise self._refuse("share", errno.EINVAL, who,
                               f"mode {mode:04o} is not read access: share adds only read "
                               f"and search bits (a subset of {SHAREABLE_BITS:04o}), never "
                               "write bits", **fields)
        self.core.require_writable("share", who, **fields)

        def job(tx: WriteTxn, batch: Any) -> dict[str, Any]:
            try:
                top = self.resolve(tx, path)
            except NotFound:
                raise self._refuse("share", errno.ENOENT, who, "no such entry",
                                   **fields) from None
            entries: list[tuple[int, Inode]] = []
            todo = [top]
            while todo:
                n = todo.pop()
                inode = self.core.inode_in(tx, n)
                entries.append((n, inode))
                if len(entries) > MAX_REQUEST_ENTRIES:
                    raise self._refuse("share", errno.E2BIG, who, f"it covers more than "
                                       f"{MAX_REQUEST_ENTRIES} entries: share its parts one "
                                       "by one", **fields)
                if recursive and inode.kind is Kind.DIR:
                    todo.extend(child for _, child in tx.iter_dirents(n))
            writing = [n for n, i in entries if i.kind is Kind.FILE
                       and i.state is State.WRITING]
            if top in writing:
                raise self._refuse("share", errno.EBUSY, who, "it is still being written; "
                                   "share it once it is sealed", **fields)
            now = advance_clock(tx, self.core.clock())
            changed: list[int] = []
            for n, inode in entries:
                if n in writing or inode.kind is Kind.SYMLINK or tx.get_inode(n) is None:
                    continue
                stored = Inode.from_bytes(tx.get_inode(n) or b"")
                old = stored.mode
                stored.mode |= read_bits_for(stored.kind, mode)
                if stored.mode == old and n != top:
                    continue
                # kept, so that a chmod in the settle window cannot take it back
                stored.extra["shared"] = int(stored.extra.get("shared", 0)) | mode  # type: ignore[call-overload]
                if stored.mode != old:
                    stored.ctime_ns = now
                    changed.append(n)
                tx.put_inode(n, stored.to_bytes())
                batch.add(self.core.log.stamp(
                    "share", path=path_of(tx, n), ino=n, old_mode=f"{old:04o}",
                    new_mode=f"{stored.mode:04o}", requested_mode=f"{mode:04o}",
                    recursive=recursive, uid=who.uid, gid=who.gid, pid=who.pid,
                    comm=who.comm))
            return {"path": path_of(tx, top), "entries": len(entries),
                    "changed": len(changed), "skipped_writing": len(writing),
                    "mode": f"{self.core.inode_in(tx, top).mode:04o}", "_changed": changed}

        return self.core.commit(job)

    def _apply(self, tx: WriteTxn, batch: Any, req: DeletionRequest, who: Caller, now: int,
               reason: str) -> None:
        """Approve a retain or hold request: the entry must still be the requested one."""
        fields = {"request_id": req.id, "path": req.path}
        if tx.get_inode(req.ino) is None or path_of(tx, req.ino) != req.path:
            raise self._refuse(req.op("approve"), errno.ENOENT, who,
                               "the requested entry no longer exists at that path", **fields)
        batch.add(self.core.log.stamp(
            req.op("approve"), reason=reason or None, uid=who.uid, gid=who.gid, pid=who.pid,
            comm=who.comm, requester_uid=req.requester_uid, **fields,
        ))
        requester = Caller(uid=req.requester_uid, gid=-1, pid=req.requester_pid,
                           comm=req.requester_comm)
        if req.kind == "retain":
            self._set_retention(tx, batch, req.ino, requester, int(req.extra["until_ns"]),
                                who, request_id=req.id, approved_by_uid=who.uid)
        else:
            self._set_hold(tx, batch, req.ino, requester, req.reason,
                           request_id=req.id, approved_by_uid=who.uid)
        req.state, req.decided_by_uid, req.decided_ns = "approved", who.uid, now
        req.decision_reason = reason
        tx.put_deletion(req.id.encode(), req.to_bytes())


def _entries_digest(cover: Coverage) -> str:
    """Identifies exactly which entries a request covers."""
    return hashlib.sha256(",".join(str(n) for n, _ in sorted(cover.entries)).encode()).hexdigest()
