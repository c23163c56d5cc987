"""A replica follows its primary's log in the bucket: verify first, then apply.

Every ``--poll`` seconds the follower reads the bucket's ``checkpoint`` and accepts a new
tree size only if, in this order:

1. its signature verifies against the pinned key (``--pubkey``), and its origin is the
   one accepted before;
2. it does not shrink the tree (a rewound log), and a checkpoint of the size already
   accepted has the accepted root (else the log was forked);
3. the entry bundles from the accepted size on hold records whose leaf hashes, appended
   to the accepted tree (its frontier, kept in ``meta``), give the checkpoint's root:
   this proves the new tree extends the accepted one (consistency) and that the records
   are the signed ones. The records of a partial bundle accepted before must come back
   unchanged, and the level-0 hash tiles the new records touch must hold their hashes;
4. every seal among the new records has its layout object, whose size and chunk keys
   give the layout digest of the seal record.

Then one committer job applies the records (:mod:`.replica_apply`), stores the new
frontier and checkpoint, and adds a ``replica_follow`` record to the replica's own log.
A check that fails applies nothing: the finding is logged, recorded
(``replica_refused``), kept in the status, and the replica goes on serving what it
verified last. Chunks are not fetched here: a file's bytes are verified when first read
(:mod:`.replica_reads`).

Concurrency: one thread polls; it changes the store only through committer jobs and
holds no transaction while it talks to the bucket.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worm_fs.audit.checkpoint import CheckpointError, VerifierKey, open_checkpoint
from worm_fs.audit.log import AuditBatch
from worm_fs.audit.merkle import Frontier, leaf_hash
from worm_fs.core.fs import WormCore
from worm_fs.core.model import Inode
from worm_fs.errors import WormError
from worm_fs.replication.layout_objects import (
    SEALS,
    Layout,
    file_object,
    read_layout_object,
)
from worm_fs.replication.pinned import get_pinned
from worm_fs.replication.replica_apply import Applied, apply_records
from worm_fs.replication.replica_reads import ReplicaChunks
from worm_fs.replication.s3 import Bucket
from worm_fs.replication.tiles import WIDTH, parse_bundle, tile_path
from worm_fs.store import WriteTxn, u64

log = logging.getLogger(__name__)

#: meta keys of the followed log
FRONTIER = "follow_frontier"
TAIL = "follow_tail"  # leaf hashes of the accepted records of the last, partial tile
CHECKPOINT = "follow_checkpoint"
SOURCE = "replica_of"
STATUS_FILE = "replica-status.json"
#: meta: replaced objects found since the replica was made, and the newest one found
#: (kept, so a restart does not clear what ``replication status`` reports).
REPLACED_META = "replica_replaced_objects"
LAST_REPLACED_META = "replica_last_replaced"
#: Layout objects fetched at once.
PARALLEL = 16
#: Layouts kept in memory from their seal until their chunk_hashes record arrives.
UNVOUCHED_KEPT = 4096


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """What the replica daemon last wrote about itself (None: not a replica, or never
    mounted). ``age_seconds`` says how old it is."""
    path = Path(state_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text())
        data["age_seconds"] = round(time.time() - path.stat().st_mtime, 3)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Refusal(Exception):
    """The bucket's log or an object failed a check: nothing of it is applied."""

    def __init__(self, obj: str, detail: str) -> None:
        super().__init__(f"{obj}: {detail}")
        self.object, self.detail = obj, detail


@dataclass
class FollowStatus:
    """What ``replication status`` shows on a replica (also written to STATUS_FILE)."""

    bucket: str
    size: int = 0
    root: str = ""
    newest_seen_size: int = 0
    unapplied_since_ns: int = 0
    last_poll_ns: int = 0
    last_applied_ns: int = 0
    last_error: str = ""
    refused: str = ""
    refusals: int = 0
    replaced: int = 0  # distinct objects, since the replica was made (kept in its store)
    replaced_since_start: int = 0
    last_replaced: str = ""
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, now_ns: int) -> dict[str, Any]:
        behind_s = (now_ns - self.unapplied_since_ns) / 1e9 if self.unapplied_since_ns else 0.0
        return {"role": "replica", "bucket": self.bucket, "followed_size": self.size,
                "followed_root": self.root, "newest_seen_size": self.newest_seen_size,
                "behind_records": max(0, self.newest_seen_size - self.size),
                "behind_seconds": round(behind_s, 3),
                "last_poll_age_seconds": round((now_ns - self.last_poll_ns) / 1e9, 3)
                if self.last_poll_ns else None,
                "last_error": self.last_error, "refused": self.refused,
                "refusals": self.refusals, "replaced_objects": self.replaced,
                "replaced_since_start": self.replaced_since_start,
                "last_replaced": self.last_replaced, "polls": self.polls, **self.extra}


class Follower:
    """Polls the bucket and applies what verifies; see the module docstring."""

    def __init__(self, core: WormCore, bucket: Bucket, verifier: VerifierKey,
                 chunks: ReplicaChunks, *, poll_s: float = 5.0,
                 on_removed: Callable[[list[tuple[int, bytes, int]]], None] | None = None,
                 on_changed: Callable[[list[int]], None] | None = None) -> None:
        self.core = core
        self.bucket = bucket
        self.verifier = verifier
        self.chunks = chunks
        self.poll_s = poll_s
        self.on_removed = on_removed
        self.on_changed = on_changed
        self.source = str(bucket.url)
        self.status = FollowStatus(self.source)
        self.status_path = Path(core.store.path) / STATUS_FILE
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # (ino, layout) -> layout read at the seal, until its chunk_hashes record comes
        self._unvouched: OrderedDict[tuple[int, str], Layout] = OrderedDict()
        with core.store.read() as rt:
            raw = rt.get_meta(FRONTIER)
            self.frontier = Frontier.from_bytes(raw) if raw else Frontier()
            tail = rt.get_meta(TAIL) or b""
            self.tail = [tail[i : i + 32] for i in range(0, len(tail), 32)]
            note = rt.get_meta(CHECKPOINT)
            self.status.replaced = rt.get_counter(REPLACED_META)
            self.status.last_replaced = (rt.get_meta(LAST_REPLACED_META) or b"").decode()
        self.origin = open_checkpoint(note, verifier).origin if note else None
        self.status.size = self.frontier.size
        self.status.root = self.frontier.root().hex()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.write_status()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_safely()

    def poll_safely(self) -> bool:
        """One poll; never raises (the status and the journal say what went wrong)."""
        try:
            return self.poll()
        except Refusal as exc:
            self._refused(exc)
        except WormError as exc:
            if self.status.last_error != exc.message:
                log.warning("replica: cannot follow %s (%s); serving what was verified "
                            "last, retrying", self.source, exc.message)
            self.status.last_error = exc.message
        except Exception as exc:
            log.exception("replica: following %s failed unexpectedly; retrying", self.source)
            self.status.last_error = f"internal error: {exc}"
        finally:
            self.status.polls += 1
            self.status.last_poll_ns = time.time_ns()
            self.write_status()
        return False

    def write_status(self) -> None:
        self.status.extra = self.chunks.stats()
        data = json.dumps(self.status.as_dict(time.time_ns()), sort_keys=True)
        tmp = self.status_path.with_name(STATUS_FILE + ".tmp")
        try:
            tmp.write_text(data)
            tmp.replace(self.status_path)
        except OSError as exc:
            log.warning("replica: cannot write %s (%s)", self.status_path, exc.strerror)

    # ------------------------------------------------------------------ one poll
    def poll(self) -> bool:
        """Accept and apply the bucket's newest checkpoint if it verifies. True if the
        replica changed; :class:`Refusal` if a check failed."""
        note = self.bucket.get("checkpoint")
        if note is None:
            raise WormError(f"{self.source} holds no checkpoint yet")
        try:
            cp = open_checkpoint(note, self.verifier)
        except CheckpointError as exc:
            raise Refusal("checkpoint", f"not signed by the pinned key: {exc}") from None
        if self.origin is not None and cp.origin != self.origin:
            raise Refusal("checkpoint", f"origin {cp.origin!r} is not the followed log's "
                          f"({self.origin!r})")
        self.status.last_error = ""
        if cp.size != self.status.newest_seen_size or not self.status.unapplied_since_ns:
            self.status.newest_seen_size = cp.size
        if cp.size < self.frontier.size:
            raise Refusal("checkpoint", f"the log was rewound: tree size {cp.size} is "
                          f"smaller than the {self.frontier.size} records accepted before")
        if cp.size == self.frontier.size:
            if cp.root != self.frontier.root():
                raise Refusal("checkpoint", f"the log was forked: tree size {cp.size} with "
                              "a root other than the one accepted before")
            self.status.unapplied_since_ns = 0
            return False
        if not self.status.unapplied_since_ns:
            self.status.unapplied_since_ns = time.time_ns()
        raws, leaves, bundles = self._new_records(cp.size)
        frontier = self.frontier.copy()
        frontier.extend(leaves)
        if frontier.root() != cp.root:
            raise Refusal(" .. ".join(dict.fromkeys([bundles[0], bundles[-1]])),
                          f"the records from {self.frontier.size} to {cp.size} do not "
                          "extend the accepted log to the checkpoint's root (a forked log "
                          "or a tampered entry bundle)")
        self._check_hash_tiles(self.frontier.size, leaves)
        records = [json.loads(raw) for raw in raws]
        layouts = self._layouts(records)
        hashed, unhashed = self._chunk_hashes(records)
        applied = self._apply(records, layouts, frontier, cp.size, note, leaves)
        self.frontier = frontier
        self.origin = cp.origin
        self.status.size, self.status.root = cp.size, cp.root.hex()
        self.status.unapplied_since_ns = 0
        self.status.last_applied_ns = time.time_ns()
        self.status.refused = ""
        self._after(applied)
        self._trust_chunk_hashes(hashed)
        for refusal in unhashed:  # reported; those files are checked whole at first read
            self._refused(refusal)
        return True

    def _new_records(self, size: int) -> tuple[list[bytes], list[bytes], list[str]]:
        """The records from the accepted size to ``size``, their leaf hashes and the
        names of the bundles that held them."""
        done = self.frontier.size
        raws: list[bytes] = []
        names: list[str] = []
        for index in range(done // WIDTH, -(-size // WIDTH)):
            width = min(WIDTH, size - index * WIDTH)
            name = tile_path("entries", index, width)
            names.append(name)
            body = self.bucket.get(name)
            if body is None:
                raise Refusal(name, "missing")
            try:
                group = parse_bundle(body)
            except ValueError as exc:
                raise Refusal(name, f"malformed: {exc}") from None
            if len(group) != width:
                raise Refusal(name, f"holds {len(group)} records, not {width}")
            first = index * WIDTH
            if first < done:  # the partial bundle accepted before, now wider
                old = [leaf_hash(r) for r in group[: done - first]]
                if old != self.tail[: done - first]:
                    raise Refusal(name, "changes records accepted before (a forked log)")
                group = group[done - first :]
            raws += group
        return raws, [leaf_hash(r) for r in raws], names

    def _check_hash_tiles(self, done: int, leaves: list[bytes]) -> None:
        """The level-0 tiles the new records touch must hold their leaf hashes."""
        size = done + len(leaves)
        known = self.tail[: done % WIDTH] + leaves
        start = done - done % WIDTH
        for lo in range(0, len(known), WIDTH):
            group = known[lo : lo + WIDTH]
            name = tile_path(0, (start + lo) // WIDTH, len(group))
            body = self.bucket.get(name)
            if body is None:
                raise Refusal(name, "missing")
            if body != b"".join(group):
                raise Refusal(name, "does not hold the hashes of the records")
        assert start + len(known) == size

    def _layouts(self, records: list[dict[str, Any]]) -> dict[tuple[int, str], Layout]:
        # A file deleted later in the same records is never seen sealed here, and its
        # layout object may never have reached the bucket (deleted before the uploader
        # got to it, or before the store replicated at all): not looked for.
        deleted = {int(r["ino"]) for r in records
                   if r.get("op") == "delete" and r.get("result") == "ok" and "ino" in r}
        seals = [r for r in records if r.get("result") == "ok" and r.get("op") in SEALS
                 and r.get("layout") and int(r["ino"]) not in deleted]
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            found = list(pool.map(self._layout, seals))
        return {(int(r["ino"]), str(r["layout"])): layout
                for r, layout in zip(seals, found, strict=True)}

    def _layout(self, rec: dict[str, Any]) -> Layout:
        """The layout object of a seal record: the newest version whose size and chunk
        keys give the record's layout digest (an older one if a newer one fails)."""
        layout = self._pinned_layout(
            int(rec["ino"]), str(rec["layout"]), rec.get("size"), lambda _: True,
            f" (the layout of {rec.get('path')}, sealed at record {rec.get('seq')})")
        if layout.shas is not None:  # kept for the file's chunk_hashes record
            with self._lock:
                self._unvouched[(int(rec["ino"]), str(rec["layout"]))] = layout
                while len(self._unvouched) > UNVOUCHED_KEPT:
                    self._unvouched.popitem(last=False)
        return layout

    def _pinned_layout(self, ino: int, digest: str, size: int | None,
                       accept: Callable[[Layout], bool], what: str) -> Layout:
        """The newest version of the layout object of (``ino``, ``digest``) that checks
        and that ``accept`` takes; a replaced newest version is reported, and if no
        version will do, :class:`Refusal`."""
        name = file_object(ino, digest)
        found: list[Layout] = []
        problems: list[str] = []

        def matches(data: bytes) -> bool:
            try:
                layout = read_layout_object(data, digest, size)
            except ValueError as exc:
                problems.append(str(exc))
                return False
            if not accept(layout):
                problems.append("its chunk_sha256 list does not match the file's "
                                "chunk_hashes record")
                return False
            found.append(layout)
            return True

        pinned = get_pinned(self.bucket, name, matches)
        if pinned.data is None:
            raise Refusal(name, f"{problems[0]}{what}" if problems else f"missing{what}")
        if pinned.failed:
            self.note_replaced(name, f"{problems[0]}; took version {pinned.version_id}")
        return found[-1]

    def _chunk_hashes(self, records: list[dict[str, Any]],
                      ) -> tuple[dict[tuple[int, str], list[bytes]], list[Refusal]]:
        """The per-chunk SHA-256s that the ``chunk_hashes`` records among ``records``
        vouch for, by (ino, layout), and a Refusal for each that no version of its
        layout object matches. The layout read at the file's seal is used when it is
        still in memory; else the object is read again."""
        found: dict[tuple[int, str], list[bytes]] = {}
        refused: list[Refusal] = []
        for rec in records:
            if rec.get("op") != "chunk_hashes" or rec.get("result") != "ok" \
                    or not rec.get("layout") or "ino" not in rec:
                continue
            ident = (int(rec["ino"]), str(rec["layout"]))
            with self._lock:
                known = self._unvouched.pop(ident, None)
            if known is None and not self._holds(*ident):
                continue  # deleted since (or never sealed here): nothing to read
            if known is None or not known.vouched_by(rec):
                try:
                    known = self._pinned_layout(
                        *ident, None, lambda layout, rec=rec: layout.vouched_by(rec),
                        f" (chunk_hashes record {rec.get('seq')})")
                except Refusal as exc:
                    refused.append(exc)
                    continue
            assert known.shas is not None
            found[ident] = known.shas
        return found, refused

    def _holds(self, ino: int, layout: str) -> bool:
        """Whether the replica's namespace has sealed file ``ino`` with ``layout``."""
        with self.core.store.read() as rt:
            raw = rt.get_inode(ino)
        return raw is not None and Inode.from_bytes(raw).layout == layout

    def _trust_chunk_hashes(self, hashed: dict[tuple[int, str], list[bytes]]) -> None:
        """After the commit: files whose chunk SHA-256s the log vouches for are read
        chunk by chunk, each checked on its own, with no whole-file fetch first."""
        for (ino, layout), shas in hashed.items():
            if self._holds(ino, layout):  # not deleted by the same batch
                self.chunks.cache.set_verified(ino, layout, shas)

    def _apply(self, records: list[dict[str, Any]], layouts: dict[tuple[int, str], Layout],
               frontier: Frontier, size: int, note: bytes, leaves: list[bytes]) -> Applied:
        tail = (self.tail[: self.frontier.size % WIDTH] + leaves)
        tail = tail[len(tail) - size % WIDTH :] if size % WIDTH else []

        def job(tx: Any, batch: Any) -> Applied:
            applied = apply_records(tx, records, layouts, self.source)
            tx.put_meta(FRONTIER, frontier.to_bytes())
            tx.put_meta(TAIL, b"".join(tail))
            tx.put_meta(CHECKPOINT, note)
            tx.put_meta(SOURCE, self.source.encode())
            tx.put_meta("follow_size", u64(size))
            batch.add(self.core.log.stamp(
                "replica_follow", bucket=self.source, size=size,
                root=frontier.root().hex(), added=applied.added, sealed=applied.sealed,
                removed=len(applied.removed)))
            return applied

        applied = self.core.commit(job)
        self.tail = tail
        return applied

    def _after(self, applied: Applied) -> None:
        """After the commit: drop what no file needs from the cache, tell the kernel."""
        self.chunks.cache.drop(applied.freed_keys)
        for ino, layout in applied.forgotten:
            self.chunks.forget(ino, layout)
        if self.on_removed and applied.removed:
            self.on_removed(applied.removed)
        if self.on_changed and applied.changed:
            self.on_changed(applied.changed)

    def _refused(self, exc: Refusal) -> None:
        text = str(exc)
        self.status.refusals += 1
        if self.status.refused != text:
            log.error("replica: refused the bucket's log (%s); serving what was verified "
                      "at tree size %d", text, self.frontier.size)
            self.core.log.note(self.core.log.stamp(
                "replica_refused", errno.EIO, bucket=self.source, object=exc.object,
                detail=exc.detail, accepted_size=self.frontier.size))
        self.status.refused = text

    def note_refused_file(self, obj: str, detail: str) -> None:
        """A file's bytes failed their check at read (from :mod:`.replica_reads`)."""
        self._refused(Refusal(obj, detail))

    def note_replaced(self, obj: str, detail: str) -> None:
        """An object whose newest version failed its check, read from an older version
        that passed (:mod:`.pinned`): served, and reported."""
        text = f"{obj}: {detail}"
        self.status.replaced_since_start += 1
        self.status.last_replaced = text
        log.error("replica: the bucket's %s was replaced: %s", obj, detail)
        record = self.core.log.stamp(
            "replica_replaced", errno.EIO, bucket=self.source, object=obj, detail=detail)

        def job(tx: WriteTxn, batch: AuditBatch) -> None:  # the count with its record
            seen = f"{REPLACED_META}/{obj}"
            if tx.get_meta(seen) is None:  # each object counted once, across restarts
                tx.put_meta(seen, b"1")
                tx.add_counter(REPLACED_META, 1)
            self.status.replaced = tx.get_counter(REPLACED_META)
            tx.put_meta(LAST_REPLACED_META, text.encode())
            batch.add(record)

        self.core.committer.submit(job)  # never waits: may run on a reading thread

