"""``worm-fs restore``: rebuild a store on a new host from its bucket alone.

Nothing in the bucket is trusted before it is checked against the pinned verifier key:
the newest checkpoint's signature, the records' Merkle root against it, each sealed
file's layout object against the layout digest of its seal record (the checks of
:mod:`.bucket_verify`, first), then each chunk against its key (and its SHA-256 where
the log vouches for one) and each file's bytes against its sealed SHA-256, as they are
fetched, once each, in parallel. The store is built in a directory beside
``STATE_DIR`` and renamed into place only when every check passed: any finding refuses
the restore, removes what was built and leaves ``STATE_DIR`` as it was, except a chunk
or layout object whose newest version fails while an older one passes (S3 cannot refuse
a new version, nor a delete marker): the restore reads the version that passes, which the
log pins by digest, and reports the object.

The namespace is replayed from the records (``mkdir``, ``create``, ``symlink``,
``rename``, ``setattr``, ``seal``, ``delete``, holds, retention), so the restored store
holds the files sealed up to the checkpoint, under their names, with their modes,
owners, SHA-256s and layouts, and the audit log itself, record for record (the same
root). Files still being written at the checkpoint, and quarantined ones, are not in
the bucket and are left out (counted in the report).

The signing key is not in the bucket. Given ``signing_key`` (the store's
``audit-signing.key`` from a backup), it is copied in after checking it is the pinned
key; without it the restored store gets a new key at its first mount, under the same
name, and its checkpoints from then on verify only against the new key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from worm_fs.audit.anchor import KEY_FILE, ORIGIN_KEY
from worm_fs.audit.checkpoint import Checkpoint, SigningKey, VerifierKey, open_checkpoint
from worm_fs.audit.log import FRONTIER_KEY, NEXT_SEQ_KEY
from worm_fs.audit.merkle import Frontier, leaf_hash
from worm_fs.core.fs import SCHEMA_VERSION
from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import ROOT_INO
from worm_fs.core.sealing import LAYOUTS_META
from worm_fs.errors import Corruption, UsageError
from worm_fs.replication.bucket_verify import (
    CheckedLayout,
    chunk_object_name,
    fetch_chunk,
    verify_bucket,
)
from worm_fs.replication.layout_objects import SEALS, file_object
from worm_fs.replication.pinned import Pinned
from worm_fs.replication.replica_apply import apply_attributes
from worm_fs.replication.s3 import Bucket
from worm_fs.store import Store, put_chunk, u64

#: Chunk fetches in flight (each holds up to a chunk in memory).
FETCHES = 16
#: Chunk bytes stored per transaction of the store being built.
COMMIT_BYTES = 64 << 20


class RestoreRefused(Corruption):
    """The bucket failed its checks: nothing was restored (errno and exit code of
    :class:`Corruption`)."""


@dataclass
class RestoreReport:
    size: int = 0
    files: int = 0
    entries: int = 0
    chunks: int = 0
    left_out: list[str] = field(default_factory=list)
    #: Objects read from an older version because newer ones fail their check (the
    #: restore routes around them, and reports each): (object, what was found).
    replaced: list[tuple[str, str]] = field(default_factory=list)


def restore(bucket: Bucket, verifier: VerifierKey, state_dir: Path, *,
            signing_key: Path | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> RestoreReport:
    state_dir = Path(state_dir)
    if state_dir.exists() and any(state_dir.iterdir()):
        raise UsageError(f"{state_dir} is not empty: restore builds a new store")
    key = None
    if signing_key is not None:
        key = SigningKey.load(signing_key)
        if key.verifier_key() != str(verifier):
            raise UsageError(f"{signing_key} is not the key of --pubkey")
    checked = verify_bucket(bucket, verifier, progress, with_chunks=False)
    if any(f.good_version is None for f in checked.findings):
        raise RestoreRefused("the bucket failed its checks; nothing was restored:\n" + "\n".join(
            f"  {f.object}: {f.detail}" for f in checked.findings))
    note, records = checked.note, checked.records  # what the checks just read
    cp = open_checkpoint(note, verifier)
    namespace = _replay([json.loads(r) for r in records])
    report = RestoreReport(size=cp.size,
                           replaced=[(f.object, f.detail) for f in checked.findings])
    sealed = [inode for inode in namespace.inodes.values()
              if inode.kind is Kind.FILE and inode.state is State.SEALED]
    for inode in sealed:  # the verify and the replay must agree on every file
        found = checked.layouts.get(inode.ino)
        if found is None or found.layout != inode.layout:
            raise RestoreRefused(f"{file_object(inode.ino, inode.layout)}: no checked "
                                 "layout for a file the records leave sealed")
    tmp = state_dir.with_name(state_dir.name + ".restoring")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        store = Store(tmp)
        try:
            _store_chunks(bucket, store, sealed, checked.layouts, report, progress)
            _store_namespace(store, cp, note, records, namespace, report)
        finally:
            store.close()
        if key is not None:
            key.save(tmp / KEY_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if state_dir.exists():
        state_dir.rmdir()
    os.rename(tmp, state_dir)
    return report


def _store_namespace(store: Store, cp: Checkpoint, note: bytes, records: list[bytes],
                     namespace: _Namespace, report: RestoreReport) -> None:
    """The audit log, its checkpoint, the store's identity and every entry, in one
    transaction (the chunks and manifests are stored already)."""
    with store.write() as tx:
        frontier = Frontier()
        for seq, raw in enumerate(records):
            tx.put_record(seq, raw)
            frontier.append(leaf_hash(raw))
        tx.put_meta(FRONTIER_KEY, frontier.to_bytes())
        tx.put_meta(NEXT_SEQ_KEY, u64(len(records)))
        tx.put_checkpoint(cp.size, note)
        tx.put_meta("schema_version", str(SCHEMA_VERSION).encode())
        default = cp.origin.startswith("worm-fs/")
        # A store id names the runtime directory: a chosen origin keeps its own meta
        # and the restored store gets a fresh id.
        tx.put_meta("store_id", cp.origin.removeprefix("worm-fs/").encode() if default
                    else secrets.token_hex(8).encode())
        if not default:
            tx.put_meta(ORIGIN_KEY, cp.origin.encode())
        tx.put_meta(LAYOUTS_META, b"1")
        files = logical = 0
        for inode in namespace.inodes.values():
            if inode.kind is Kind.FILE:
                if inode.state is not State.SEALED:
                    report.left_out.append(namespace.path(inode.ino))
                    continue
                files += 1
                logical += inode.size
            tx.put_inode(inode.ino, inode.to_bytes())
            if inode.ino != ROOT_INO:
                tx.put_dirent(inode.parent, inode.name, inode.ino)
            report.entries += 1
        tx.add_counter("files", files)
        tx.add_counter("logical_bytes", logical)
        tx.put_meta("next_ino", u64(max(namespace.inodes) + 1))
    report.files = files


def _store_chunks(bucket: Bucket, store: Store, sealed: list[Inode],
                  layouts: dict[int, CheckedLayout], report: RestoreReport,
                  progress: Callable[[str, int, int], None] | None) -> None:
    """Every sealed file's chunks and manifest, fetched once each (a chunk two files
    share: once), checked as they arrive, in transactions of about COMMIT_BYTES."""
    wanted = [(inode, index, key) for inode in sealed
              for index, key in enumerate(layouts[inode.ino].keys)]
    first: dict[bytes, int] = {}  # each distinct chunk at its first place in ``wanted``
    for n, (_, _, key) in enumerate(wanted):
        first.setdefault(key, n)
    sha = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=FETCHES) as pool:
        fetched = _fetched_in_order(pool, bucket, list(first.values()), wanted, layouts)
        places = iter(enumerate(wanted))
        more = True
        while more:
            with store.write() as tx:
                tx_bytes = 0
                for n, (inode, index, key) in places:
                    name = chunk_object_name(key)
                    if first[key] == n:
                        pinned, problem = next(fetched)
                        if pinned.data is None:
                            raise RestoreRefused(
                                f"{name}: {problem} (a chunk of inode {inode.ino}); "
                                "nothing was restored")
                        if pinned.failed:
                            report.replaced.append((name, (
                                f"{pinned.failed} newer version(s) or delete marker "
                                f"fail their check; restored from version "
                                f"{pinned.version_id}")))
                        data = pinned.data
                        report.chunks += 1
                    else:  # checked against its key where it was first fetched
                        data = tx.get_chunk(key) or b""
                        shas = layouts[inode.ino].shas
                        if shas and hashlib.sha256(data).digest() != shas[index]:
                            raise RestoreRefused(
                                f"{name}: does not match its SHA-256 in the layout of "
                                f"inode {inode.ino}; nothing was restored")
                    if index == 0:
                        sha = hashlib.sha256()
                    sha.update(data)
                    if put_chunk(tx, data) != key:  # another chunk with the same XXH3
                        raise RestoreRefused(f"{name}: did not store under its key; "
                                             "nothing was restored")
                    tx.put_manifest(inode.ino, index, key)
                    if index == len(layouts[inode.ino].keys) - 1:
                        _check_whole(inode, sha)
                    if progress:
                        progress("chunks", n + 1, len(wanted))
                    tx_bytes += len(data)
                    if tx_bytes >= COMMIT_BYTES:
                        break
                else:
                    more = False
    for inode in sealed:  # files of no chunks: the SHA-256 of nothing
        if not layouts[inode.ino].keys:
            _check_whole(inode, hashlib.sha256())


def _check_whole(inode: Inode, sha: hashlib._Hash) -> None:
    if sha.hexdigest() != inode.sha256:
        raise RestoreRefused(f"{file_object(inode.ino, inode.layout)}: its chunks do not "
                             "give the file's sealed SHA-256; nothing was restored")


def _fetched_in_order(pool: ThreadPoolExecutor, bucket: Bucket, places: list[int],
                      wanted: list[tuple[Inode, int, bytes]],
                      layouts: dict[int, CheckedLayout],
                      ) -> Iterator[tuple[Pinned, str | None]]:
    """The chunks at ``places`` of ``wanted``, in that order, FETCHES at a time, each at
    its newest version that passes its checks (:func:`.bucket_verify.fetch_chunk`)."""
    window: deque[Future[tuple[Pinned, str | None]]] = deque()
    for n in places:
        inode, index, key = wanted[n]
        shas = layouts[inode.ino].shas
        window.append(pool.submit(fetch_chunk, bucket, key, shas[index] if shas else None))
        if len(window) >= FETCHES:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


@dataclass
class _Namespace:
    inodes: dict[int, Inode]
    names: dict[tuple[int, bytes], int]

    def resolve(self, path: str) -> int | None:
        ino = ROOT_INO
        for part in [p for p in path.split("/") if p]:
            child = self.names.get((ino, part.encode("utf-8", "surrogateescape")))
            if child is None:
                return None
            ino = child
        return ino

    def path(self, ino: int) -> str:
        parts = []
        while ino != ROOT_INO and ino in self.inodes:
            inode = self.inodes[ino]
            parts.append(inode.name.decode("utf-8", "surrogateescape"))
            ino = inode.parent
        return "/" + "/".join(reversed(parts))

    def place(self, inode: Inode, path: str) -> bool:
        parent_path, _, name = path.rstrip("/").rpartition("/")
        parent = self.resolve(parent_path)
        if parent is None:
            return False
        inode.parent, inode.name = parent, name.encode("utf-8", "surrogateescape")
        self.inodes[inode.ino] = inode
        self.names[(parent, inode.name)] = inode.ino
        return True

    def remove(self, ino: int) -> None:
        inode = self.inodes.pop(ino, None)
        if inode is not None:
            self.names.pop((inode.parent, inode.name), None)


def _replay(records: list[dict]) -> _Namespace:
    """The namespace the records describe (only records whose result is ``ok``)."""
    ns = _Namespace({ROOT_INO: Inode(ROOT_INO, Kind.DIR, 0o755, 0, 0, ROOT_INO, b"")}, {})
    for rec in records:
        if rec.get("result") != "ok" or "ino" not in rec:
            continue
        op, ino, when = rec["op"], int(rec["ino"]), int(rec.get("time_ns", 0))
        inode = ns.inodes.get(ino)
        if op in ("mkdir", "create", "symlink") and "path" in rec:
            kind = {"mkdir": Kind.DIR, "create": Kind.FILE, "symlink": Kind.SYMLINK}[op]
            target = str(rec.get("target", "")).encode("utf-8", "surrogateescape")
            new = Inode(ino, kind, int(rec.get("mode", 0o777)) & 0o7777,
                        int(rec.get("uid", 0)), int(rec.get("gid", 0)), ROOT_INO, b"",
                        state=State.WRITING if kind is Kind.FILE else State.SEALED,
                        size=len(target), target=target, atime_ns=when, mtime_ns=when,
                        ctime_ns=when, changed_ns=when, born_ns=when)
            ns.place(new, rec["path"])
        elif inode is None:
            continue
        elif op == "rename" and "new_path" in rec:
            ns.names.pop((inode.parent, inode.name), None)
            ns.place(inode, rec["new_path"])
            inode.ctime_ns = when
        elif op in SEALS:
            inode.state, inode.size = State.SEALED, int(rec.get("size", 0))
            inode.sha256, inode.layout = str(rec.get("sha256", "")), str(rec.get("layout", ""))
            inode.mode &= ~0o222
            inode.sealed_ns = inode.ctime_ns = inode.changed_ns = when
            inode.clean = True
            inode.extra["provenance"] = {"sha256": inode.sha256, "size": inode.size,
                                         "seal_seq": rec.get("seq"), "restored": True}
        elif op == "layout_recorded":
            inode.layout = str(rec.get("layout", ""))
        elif op == "recover_quarantine":
            inode.state = State.QUARANTINED
        elif apply_attributes(inode, rec):  # setattr, share, holds, retention
            pass
        elif op == "delete":
            ns.remove(ino)
    for inode in list(ns.inodes.values()):  # below a directory that is gone: gone too
        if inode.ino != ROOT_INO and ns.path(inode.ino) and inode.parent not in ns.inodes:
            ns.remove(inode.ino)
    return ns
