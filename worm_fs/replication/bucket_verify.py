"""``worm-fs verify --bucket``: check a bucket on its own, against a pinned key.

Trusts nothing in the bucket but what the signed checkpoint commits to:

1. ``checkpoint``: its signature against the verifier key, giving a tree size and root;
2. the entry bundles up to that size: their records' leaf hashes must give that root,
   and every hash tile of that size must hold what those records give;
3. the records: every file sealed and not deleted since, with its SHA-256 and layout
   digest from its seal record;
4. for each such file, ``files/<ino>-<layout>.json``: its size and chunk keys must give
   the layout digest of the seal record; every chunk must match its key (XXH3) and the
   file's bytes its sealed SHA-256 (the strong check); where a ``chunk_hashes`` record
   vouches for the object's ``chunk_sha256`` list, the list must give the record's
   digest and each chunk its SHA-256 in it;
5. every object of a sealed file must have been written under Object Lock (a retention
   that has run out since is counted, not reported: the bucket then no longer protects
   that object, by the retention chosen).

Each problem is a finding naming the object. Nothing is written. ``restore`` runs steps
1-4 without the chunks (``with_chunks=False``) and checks each chunk as it stores it
(:func:`chunk_problem`), so every chunk is downloaded once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worm_fs.audit.checkpoint import CheckpointError, VerifierKey, open_checkpoint
from worm_fs.audit.merkle import leaf_hash, root_hash
from worm_fs.errors import Corruption
from worm_fs.replication.bucket_checkpoints import check_checkpoints
from worm_fs.replication.layout_objects import SEALS, file_object, read_layout_object
from worm_fs.replication.pinned import Pinned, get_pinned
from worm_fs.replication.s3 import Bucket
from worm_fs.replication.tiles import WIDTH, TileTree, parse_bundle, tile_path
from worm_fs.store import check_chunk

#: Files checked at once (each a few requests in a row).
PARALLEL = 16


@dataclass
class BucketFinding:
    object: str
    detail: str
    #: An older version of ``object`` that passes its check, read instead of the newer
    #: ones that fail (None: no version passes, or the object is not versioned data).
    good_version: str | None = None


@dataclass
class CheckedLayout:
    layout: str  # the digest the seal record gives, which the object matched
    keys: list[bytes]
    shas: list[bytes] | None


@dataclass
class BucketReport:
    size: int = 0
    files: int = 0
    chunks: int = 0
    #: Objects whose retention ran out (written locked, no longer protected).
    expired: int = 0
    findings: list[BucketFinding] = field(default_factory=list)
    #: The checkpoint's note and the records it covers, once checked (for restore).
    note: bytes = b""
    records: list[bytes] = field(default_factory=list, repr=False)
    #: Each sealed file's checked layout (for restore): ino -> chunk keys, and their
    #: SHA-256s where a ``chunk_hashes`` record vouches for them.
    layouts: dict[int, CheckedLayout] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return not self.findings

    def bad(self, name: str, detail: str, good_version: str | None = None) -> None:
        with self.lock:
            self.findings.append(BucketFinding(name, detail, good_version))

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + n)


def verify_bucket(bucket: Bucket, verifier: VerifierKey,
                  progress: Callable[[str, int, int], None] | None = None,
                  kept: Sequence[tuple[str, str]] = (), *,
                  with_chunks: bool = True) -> BucketReport:
    """Check the bucket; ``kept`` adds checkpoints kept elsewhere (a label and the note)
    that the bucket's log must be consistent with. Without ``with_chunks``, the chunk
    objects are neither fetched nor checked: the caller checks them."""
    report = BucketReport()
    note = bucket.get("checkpoint")
    if note is None:
        report.bad("checkpoint", "missing: nothing was uploaded, or not to this prefix")
        return report
    try:
        cp = open_checkpoint(note, verifier)
    except CheckpointError as exc:
        report.bad("checkpoint", f"not signed by the pinned key: {exc}")
        return report
    report.size = cp.size
    records = _records(bucket, cp.size, report)
    if records is None:
        return report
    leaves = [leaf_hash(r) for r in records]
    if root_hash(leaves) != cp.root:
        report.bad("tile/entries", f"the records do not give the checkpoint's root "
                   f"(tree size {cp.size})")
        return report
    _check_tiles(bucket, leaves, cp.size, report)
    names = bucket.names("checkpoints/")  # one a second while the log grew: many
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        published = list(zip(names, pool.map(bucket.get, names), strict=True))
    for name, detail in check_checkpoints([*published, *kept], leaves, verifier):
        report.bad(name, detail)
    report.note, report.records = note, records
    sealed: dict[int, dict] = {}
    hashes: dict[tuple[int, str], dict] = {}  # the chunk_hashes record of a seal
    for raw in records:
        rec = json.loads(raw)
        if rec.get("result") != "ok":
            continue
        if rec.get("op") in SEALS and rec.get("layout"):
            sealed[int(rec["ino"])] = rec
        elif rec.get("op") == "chunk_hashes" and rec.get("layout"):
            hashes[(int(rec["ino"]), str(rec["layout"]))] = rec
        elif rec.get("op") == "delete":
            sealed.pop(int(rec.get("ino", -1)), None)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = [pool.submit(_check_file, bucket, ino, rec, report,
                               hashes.get((ino, str(rec["layout"]))), with_chunks)
                   for ino, rec in sorted(sealed.items())]
        for n, future in enumerate(futures, 1):
            future.result()
            if progress:
                progress("files", n, len(futures))
    report.findings.sort(key=lambda f: f.object)
    return report


def _records(bucket: Bucket, size: int, report: BucketReport) -> list[bytes] | None:
    records: list[bytes] = []
    for index in range(-(-size // WIDTH)):
        width = min(WIDTH, size - index * WIDTH)
        name = tile_path("entries", index, width)
        body = bucket.get(name)
        if body is None:
            report.bad(name, "missing")
            return None
        try:
            group = parse_bundle(body)
        except ValueError as exc:
            report.bad(name, f"malformed: {exc}")
            return None
        if len(group) != width:
            report.bad(name, f"holds {len(group)} records, not {width}")
            return None
        records += group
    return records


def _check_tiles(bucket: Bucket, leaves: list[bytes], size: int, report: BucketReport) -> None:
    tree = TileTree()
    tree.extend(leaves)
    for name, body in tree.tiles(size):
        stored = bucket.get(name)
        if stored is None:
            report.bad(name, "missing")
        elif stored != body:
            report.bad(name, "does not hold the hashes of the records")


def _check_file(bucket: Bucket, ino: int, rec: dict, report: BucketReport,
                hashes: dict | None = None, with_chunks: bool = True) -> None:
    """One sealed file: its layout object against the seal record, every chunk against
    its key, the chunks together against the sealed SHA-256; with a ``chunk_hashes``
    record (``hashes``), the layout object's ``chunk_sha256`` list against it and each
    chunk against its entry. Each object is read at the newest version that passes
    (:mod:`.pinned`); one that passes only beneath newer versions is a finding too."""
    report.count("files")
    name = file_object(ino, rec["layout"])
    where = f"the layout of {rec.get('path')}"

    def vouched(body: bytes) -> bool:
        try:
            layout = read_layout_object(body, rec["layout"], rec.get("size"))
        except ValueError:
            return False
        return hashes is None or layout.vouched_by(hashes)

    pinned = get_pinned(bucket, name, vouched)
    listed: list[bytes] | None = None
    if pinned.data is not None:
        layout = read_layout_object(pinned.data, rec["layout"], rec.get("size"))
        listed = layout.shas if hashes is not None else None
        _report_replaced(report, name, pinned, where)
    else:  # no version passes: say what is wrong with the newest
        body = bucket.fetch(name)
        if body is None:
            report.bad(name, f"missing ({where}, sealed at record {rec.get('seq')})")
            return
        try:
            layout = read_layout_object(body, rec["layout"], rec.get("size"))
        except ValueError as exc:
            report.bad(name, f"{exc} ({where})")
            return
        report.bad(name, f"its chunk_sha256 list does not match the chunk_hashes "
                   f"record {(hashes or {}).get('seq')} of {rec.get('path')}")
    _check_locked(bucket, name, report, pinned.version_id)
    keys = layout.keys
    with report.lock:
        report.layouts[ino] = CheckedLayout(str(rec["layout"]), keys, listed)
    if not with_chunks:
        return
    sha = hashlib.sha256()
    for index, key in enumerate(keys):
        chunk_name = chunk_object_name(key)
        pinned, problem = fetch_chunk(bucket, key, listed[index] if listed else None)
        report.count("chunks")
        if pinned.data is None:
            report.bad(chunk_name, f"{problem} (a chunk of {rec.get('path')})")
            return
        _report_replaced(report, chunk_name, pinned, f"a chunk of {rec.get('path')}")
        sha.update(pinned.data)
        _check_locked(bucket, chunk_name, report, pinned.version_id)
    if sha.hexdigest() != rec.get("sha256"):
        report.bad(name, f"the chunks of {rec.get('path')} do not give its sealed SHA-256")


def chunk_object_name(key: bytes) -> str:
    return f"chunks/{key.hex()}"


def fetch_chunk(bucket: Bucket, key: bytes, sha256: bytes | None = None,
                ) -> tuple[Pinned, str | None]:
    """Chunk ``key`` at the newest version that matches its key (and ``sha256``, the
    SHA-256 its layout lists, if given); if none does, the problem of the newest."""
    name = chunk_object_name(key)
    pinned = get_pinned(bucket, name, lambda data: chunk_problem(key, data, sha256) is None)
    if pinned.data is not None:
        return pinned, None
    newest = bucket.fetch(name)  # the failure path: say what is wrong with it
    problem = chunk_problem(key, newest, sha256)
    if pinned.failed == 0 or (newest is not None and problem and pinned.failed == 1):
        return pinned, problem  # missing, or one version, which fails
    return pinned, (f"none of its {pinned.failed} versions (or what a delete marker "
                    "hides) matches its key or SHA-256")


def _report_replaced(report: BucketReport, name: str, pinned: Pinned, what: str) -> None:
    """A finding for an object read from beneath newer versions that fail their check
    (a replaced object, or one hidden by a delete marker)."""
    if pinned.failed:
        report.bad(name, f"replaced: {pinned.failed} newer version(s) or delete marker "
                   f"fail their check ({what}); version {pinned.version_id}, which "
                   "passes, is what replicas and restore read",
                   good_version=pinned.version_id)


def chunk_problem(key: bytes, data: bytes | None, sha256: bytes | None = None) -> str | None:
    """What is wrong with ``data``, read from the chunk object of ``key`` (None: nothing):
    missing, not matching its key, or not matching the SHA-256 its layout lists."""
    try:
        check_chunk(key, data)
    except Corruption as exc:
        return str(exc)
    if sha256 is not None and hashlib.sha256(data or b"").digest() != sha256:
        return "does not match its SHA-256 in the file's layout (a replaced object)"
    return None


def _check_locked(bucket: Bucket, name: str, report: BucketReport,
                  version_id: str | None = None) -> None:
    """Whether ``name`` (at ``version_id``, else its newest version) was written locked."""
    if bucket.lock_mode is None or bucket.retention_days <= 0:
        return
    stored = bucket.head(name, version_id)
    if stored is None:
        return  # reported as missing by the reader
    until = stored.retain_until
    if stored.lock_mode is None or until is None:
        report.bad(name, "not under Object Lock retention")
    elif until <= dt.datetime.now(dt.UTC):
        report.count("expired")
