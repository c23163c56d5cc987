"""Apply a primary's verified records to a replica's namespace, inside one transaction.

A replica shows what the primary's log says, and only once the log is verified
(:mod:`.follower`): directories and symlinks from their creation, files from their seal
(a file still being written on the primary is kept aside, under ``follow_pending/<ino>``
in ``meta``, and follows its renames there), under the primary's inode numbers, names,
modes, owners and seal facts. Approved deletions remove entries and their manifests;
the chunks no file refers to any more are returned so the cache can drop them.

Only records whose result is ``ok`` change anything; opens, reads and refusals are
the primary's business. Every function here runs inside the caller's write
transaction and does no I/O beyond it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import ROOT_INO, iso_time
from worm_fs.replication.layout_objects import SEALS, Layout
from worm_fs.store import WriteTxn

PENDING_PREFIX = "follow_pending/"


@dataclass
class Applied:
    """What one batch of records changed, for the caller to act on after the commit."""

    added: int = 0
    sealed: int = 0
    #: (parent, name, ino) of entries that went away (the kernel's caches drop them).
    removed: list[tuple[int, bytes, int]] = field(default_factory=list)
    #: Chunk keys no file refers to any more, and (ino, layout) of deleted files.
    freed_keys: list[bytes] = field(default_factory=list)
    forgotten: list[tuple[int, str]] = field(default_factory=list)
    #: Inodes whose attributes changed (mode, times, holds).
    changed: list[int] = field(default_factory=list)


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _resolve(tx: WriteTxn, path: str) -> int | None:
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        child = tx.get_dirent(ino, _encode(part))
        if child is None:
            return None
        ino = child
    return ino


def _split(tx: WriteTxn, path: str) -> tuple[int, bytes] | None:
    parent_path, _, name = path.rstrip("/").rpartition("/")
    parent = _resolve(tx, parent_path)
    return None if parent is None or not name else (parent, _encode(name))


def _pending(tx: WriteTxn, ino: int) -> Inode | None:
    raw = tx.get_meta(f"{PENDING_PREFIX}{ino}")
    return None if raw is None else Inode.from_bytes(raw)


def _stored(tx: WriteTxn, ino: int) -> Inode | None:
    raw = tx.get_inode(ino)
    return None if raw is None else Inode.from_bytes(raw)


def _touch_dir(tx: WriteTxn, ino: int, when: int, subdirs: int = 0) -> None:
    parent = _stored(tx, ino)
    if parent is not None:
        parent.mtime_ns = parent.ctime_ns = parent.changed_ns = when
        parent.subdirs = max(0, parent.subdirs + subdirs)
        tx.put_inode(ino, parent.to_bytes())


def apply_records(tx: WriteTxn, records: list[dict[str, Any]],
                  layouts: dict[tuple[int, str], Layout], source: str) -> Applied:
    """Apply ``records`` (in log order) to the namespace. ``layouts`` holds the checked
    layout of every seal among them; ``source`` names the bucket (in provenance)."""
    out = Applied()
    for rec in records:
        if rec.get("result") != "ok" or "ino" not in rec:
            continue
        op, ino, when = rec["op"], int(rec["ino"]), int(rec.get("time_ns", 0))
        if op in ("mkdir", "symlink", "create") and "path" in rec:
            _create(tx, rec, op, ino, when, out)
        elif op == "rename" and "new_path" in rec:
            _rename(tx, ino, str(rec["new_path"]), when, out)
        elif op in SEALS:
            _seal(tx, rec, ino, when, layouts, source, out)
        elif op == "recover_quarantine":
            tx.raw_delete("meta", f"{PENDING_PREFIX}{ino}".encode())
        elif op == "delete":
            _delete(tx, ino, out)
        else:
            _change(tx, rec, op, ino, out)
    return out


def _create(tx: WriteTxn, rec: dict[str, Any], op: str, ino: int, when: int,
            out: Applied) -> None:
    place = _split(tx, str(rec["path"]))
    if place is None:
        return
    parent, name = place
    kind = {"mkdir": Kind.DIR, "create": Kind.FILE, "symlink": Kind.SYMLINK}[op]
    target = _encode(str(rec.get("target", "")))
    inode = Inode(ino, kind, int(rec.get("mode", 0o777)) & 0o7777, int(rec.get("uid", 0)),
                  int(rec.get("gid", 0)), parent, name,
                  state=State.WRITING if kind is Kind.FILE else State.SEALED,
                  size=len(target), target=target, atime_ns=when, mtime_ns=when,
                  ctime_ns=when, changed_ns=when, born_ns=when,
                  extra={"writer": {k: rec.get(k) for k in ("uid", "gid", "pid", "comm")}})
    if kind is Kind.FILE:  # shown once sealed
        tx.put_meta(f"{PENDING_PREFIX}{ino}", inode.to_bytes())
        return
    tx.put_inode(ino, inode.to_bytes())
    tx.put_dirent(parent, name, ino)
    _touch_dir(tx, parent, when, subdirs=1 if kind is Kind.DIR else 0)
    out.added += 1


def _rename(tx: WriteTxn, ino: int, new_path: str, when: int, out: Applied) -> None:
    place = _split(tx, new_path)
    if place is None:
        return
    parent, name = place
    pending = _pending(tx, ino)
    if pending is not None:
        pending.parent, pending.name = parent, name
        tx.put_meta(f"{PENDING_PREFIX}{ino}", pending.to_bytes())
        return
    inode = _stored(tx, ino)
    if inode is None:
        return
    tx.delete_dirent(inode.parent, inode.name)
    out.removed.append((inode.parent, inode.name, ino))
    moved = 1 if inode.kind is Kind.DIR and parent != inode.parent else 0
    _touch_dir(tx, inode.parent, when, subdirs=-moved)
    inode.parent, inode.name, inode.ctime_ns = parent, name, when
    tx.put_inode(ino, inode.to_bytes())
    tx.put_dirent(parent, name, ino)
    _touch_dir(tx, parent, when, subdirs=moved)


def _seal(tx: WriteTxn, rec: dict[str, Any], ino: int, when: int,
          layouts: dict[tuple[int, str], Layout], source: str, out: Applied) -> None:
    inode = _pending(tx, ino)
    layout = layouts.get((ino, str(rec.get("layout", ""))))
    if inode is None or layout is None:
        return  # deleted before the checkpoint, or left out by the caller
    tx.raw_delete("meta", f"{PENDING_PREFIX}{ino}".encode())
    inode.state, inode.size = State.SEALED, layout.size
    inode.sha256, inode.layout = str(rec["sha256"]), str(rec["layout"])
    inode.mode = int(rec.get("mode", inode.mode & ~0o222))
    inode.gid = int(rec.get("group", inode.gid))
    inode.sealed_ns = inode.ctime_ns = inode.changed_ns = when
    inode.mtime_ns = max(inode.mtime_ns, when) if not inode.extra.get("mtime_set") \
        else inode.mtime_ns
    inode.extra.pop("mtime_set", None)
    inode.clean = True
    inode.extra["provenance"] = {**dict(inode.extra.pop("writer", {}) or {}),  # type: ignore[call-overload]
                                 "sealed_at": iso_time(when), "seal_seq": rec.get("seq"),
                                 "sha256": inode.sha256, "size": inode.size,
                                 "replica_of": source}
    for index, key in enumerate(layout.keys):
        tx.put_manifest(ino, index, key)
        tx.set_ref(key, tx.get_ref(key) + 1)
    tx.put_inode(ino, inode.to_bytes())
    tx.put_dirent(inode.parent, inode.name, ino)
    _touch_dir(tx, inode.parent, when)
    tx.add_counter("files", 1)
    tx.add_counter("logical_bytes", inode.size)
    out.sealed += 1


def _delete(tx: WriteTxn, ino: int, out: Applied) -> None:
    tx.raw_delete("meta", f"{PENDING_PREFIX}{ino}".encode())
    inode = _stored(tx, ino)
    if inode is None:
        return
    if inode.kind is Kind.FILE:
        for index, key in list(tx.iter_manifest(ino)):
            refs = tx.get_ref(key)
            tx.set_ref(key, max(0, refs - 1))
            if refs <= 1:
                out.freed_keys.append(key)
            tx.delete_manifest(ino, index)
        tx.add_counter("files", -1)
        tx.add_counter("logical_bytes", -inode.size)
        out.forgotten.append((ino, inode.layout))
    tx.delete_dirent(inode.parent, inode.name)
    tx.delete_inode(ino)
    _touch_dir(tx, inode.parent, inode.ctime_ns, subdirs=-1 if inode.kind is Kind.DIR else 0)
    out.removed.append((inode.parent, inode.name, ino))


def apply_attributes(inode: Inode, rec: dict[str, Any]) -> bool:
    """A setattr, share, hold or retention record applied to ``inode`` (a replica's and
    a restore's replay of the log); False if ``rec`` is none of those."""
    op = rec.get("op")
    if op == "setattr":
        if "applied_mode" in rec:
            inode.mode = int(rec["applied_mode"])
        for name in ("atime_ns", "mtime_ns"):
            if name in rec:
                setattr(inode, name, int(rec[name]))
    elif op == "share" and "new_mode" in rec:
        inode.mode = int(str(rec["new_mode"]), 8)
    elif op == "hold_set":
        inode.extra["hold"] = {"reason": rec.get("reason", ""), "by_uid": rec.get("uid")}
    elif op == "hold_clear":
        inode.extra.pop("hold", None)
    elif op == "retain" and "until" in rec:
        until = dt.datetime.fromisoformat(str(rec["until"]).replace("Z", "+00:00"))
        inode.extra["retain_until_ns"] = int(until.timestamp() * 1e9)
    else:
        return False
    return True


def _change(tx: WriteTxn, rec: dict[str, Any], op: str, ino: int, out: Applied) -> None:
    """setattr, share, holds and retention: attributes of an entry."""
    pending = _pending(tx, ino)
    inode = pending or _stored(tx, ino)
    if inode is None or not apply_attributes(inode, rec):
        return
    if op == "setattr" and "mtime_ns" in rec:
        inode.extra["mtime_set"] = True
    if pending is not None:
        tx.put_meta(f"{PENDING_PREFIX}{ino}", inode.to_bytes())
    else:
        inode.extra.pop("mtime_set", None)  # only a pending file's seal looks at it
        tx.put_inode(ino, inode.to_bytes())
        out.changed.append(ino)
