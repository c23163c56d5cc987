"""Setting and showing quotas: admins only, over the admin socket, every change recorded.

A quota is set in one committer job: the limits are stored in ``meta`` and, for a tree
that had none, its usage is counted in that same transaction by walking it (so no seal
can slip between the count and the limit; the walk pauses commits for about 25 us per
entry, an admin's deliberate act). Files being written in the tree start charging it
at once. Limits take effect for changes after the commit.
"""

from __future__ import annotations

import errno
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from worm_fs.core.model import Caller, Kind, State
from worm_fs.core.paths import path_of
from worm_fs.core.quota import (
    LIMIT_PREFIX,
    USED_PREFIX,
    Key,
    Limits,
    Usage,
    counted_usage,
    meta_name,
    parse_name,
    quota_view,
)
from worm_fs.errors import NotFound
from worm_fs.store import WriteTxn

if TYPE_CHECKING:
    from worm_fs.core.deletion import Deletions


#: Wire values of a limit: remove it, or leave it as it is.
NONE = -1
KEEP = -2


class QuotaAdmin:
    """``quota set`` and ``quota show`` over one core (through the admin desk)."""

    def __init__(self, desk: Deletions) -> None:
        self.desk = desk
        self.core = desk.core

    def set(self, who: Caller, nbytes: int, files: int, *, uid: int | None = None,
            path: str | None = None) -> dict[str, Any]:
        """Set the quota of ``uid`` or of the directory tree at ``path``: a limit of
        :data:`NONE` removes it, :data:`KEEP` leaves it as it is (no limits left: the
        quota is removed)."""
        target = f"uid {uid}" if uid is not None else str(path)
        self.desk._require_admin("quota_set", who, target=target)
        self.core.require_writable("quota_set", who, target=target)
        for value in (nbytes, files):
            if value < KEEP:
                raise self.desk._refuse("quota_set", errno.EINVAL, who,
                                        "limits must be 0 or more", target=target)

        def job(tx: WriteTxn, batch: Any) -> dict[str, Any]:
            if uid is not None:
                key: Key = ("uid", uid)
            else:
                try:
                    ino = self.desk.resolve(tx, path or "/")
                except NotFound:
                    raise self.desk._refuse("quota_set", errno.ENOENT, who, "no such entry",
                                            target=target) from None
                if self.core.inode_in(tx, ino).kind is not Kind.DIR:
                    raise self.desk._refuse("quota_set", errno.ENOTDIR, who,
                                            "a tree quota is set on a directory",
                                            target=target)
                key = ("tree", ino)
            old = self.core.quotas.limits.get(key, Limits())
            limits = Limits(bytes=old.bytes if nbytes == KEEP else None if nbytes == NONE
                            else nbytes,
                            files=old.files if files == KEEP else None if files == NONE
                            else files)
            used: Usage | None = None
            if key[0] == "tree" and key not in self.core.quotas.limits and not limits.empty():
                used = self._count_tree(tx, key[1])
            name = meta_name(LIMIT_PREFIX, key)
            if limits.empty():
                tx.raw_delete("meta", name.encode())
                if key[0] == "tree":
                    tx.raw_delete("meta", meta_name(USED_PREFIX, key).encode())
            else:
                tx.put_meta(name, json.dumps(asdict(limits)).encode())
            where = path_of(tx, key[1]) if key[0] == "tree" else None
            batch.add(self.core.log.stamp(
                "quota_set", target=where or target, bytes_limit=limits.bytes,
                files_limit=limits.files, uid=who.uid, gid=who.gid, pid=who.pid,
                comm=who.comm,
            ))
            if limits.empty() and key[0] == "tree":
                self.core.quotas.forget_tree(key[1])
            else:
                self.core.quotas.set_limits(key, limits, used)
            return self._view(key, where)

        return self.core.commit(job)

    def _count_tree(self, tx: WriteTxn, top: int) -> Usage:
        """Inside the job: the durable usage of the tree (stored) plus its files being
        written (charged in memory from now on)."""
        durable, live = Usage(), Usage()
        writers: list[int] = []
        todo = [top]
        while todo:
            for child in self.core._children(tx, todo.pop()):
                inode = self.core.inode_in(tx, child)
                if inode.kind is Kind.DIR:
                    todo.append(child)
                elif (usage := counted_usage(inode)) is not None:
                    durable.bytes += usage.bytes
                    durable.files += usage.files
                elif inode.kind is Kind.FILE and inode.state is State.WRITING:
                    live.bytes += inode.size  # inode_in: the writer's size
                    live.files += 1
                    writers.append(child)
        tx.put_meta(meta_name(USED_PREFIX, ("tree", top)), json.dumps(asdict(durable)).encode())
        for ino in writers:
            writer = self.core._writers.get(ino)
            if writer is not None:
                with writer.guard:
                    writer.quota_keys.append(("tree", top))
        return Usage(durable.bytes + live.bytes, durable.files + live.files)

    def show(self, who: Caller) -> list[dict[str, Any]]:
        """Every quota with its usage, and the usage of every uid without one."""
        self.desk._require_admin("quota_show", who)
        quotas = self.core.quotas
        with self.core.store.read() as rt:
            uids = {parse_name(USED_PREFIX, n) for n, _ in rt.iter_meta(USED_PREFIX + "uid/")}
            keys = sorted(set(quotas.limits) | uids)
            paths = {k: path_of(rt, k[1]) for k in keys if k[0] == "tree"}
        return [self._view(k, paths.get(k)) for k in keys]

    def _view(self, key: Key, path: str | None) -> dict[str, Any]:
        return quota_view(key, self.core.quotas.limits.get(key, Limits()),
                          self.core.quotas.usage(key), path)
