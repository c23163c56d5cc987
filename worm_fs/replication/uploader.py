"""Continuous upload of a primary's store to its bucket, off the FUSE path.

What to upload is queued in the store itself (the ``uploads`` database), in the same
transaction that stores it: a new chunk (``c/<key hex>``), a seal (``f/<ino>/<layout
digest>``), a signed checkpoint (``l/<tree size>``). A ``kill -9`` or a reboot loses
none of it. This module's thread takes the oldest queued names in rounds, uploads
them in parallel (chunks first, then layouts, then the log, so the log never names
what the bucket lacks: see :func:`_take_oldest`), and drops them from the queue in one
committer job per round. A failing or slow bucket
only makes the queue longer: writers never wait for it.

Objects in the bucket (below its prefix), each written once:

* ``chunks/<key hex>``: a chunk's bytes;
* ``files/<ino>-<layout digest>.json``: a sealed file's layout (size, SHA-256, chunk
  keys in order) and its seal facts; the name pins the layout digest recorded in the
  log's seal record;
* ``tile/...``: the audit log as C2SP tlog-tiles (:mod:`.tiles`), then
  ``checkpoints/<size>`` (the signed checkpoint of that tree size) and ``checkpoint``
  (the newest one: a new version of that name each time; readers trust the signature
  and the consistency with what they saw, not the name).

Concurrency: one coordinator thread in the daemon takes names and changes the store
only through committer jobs; the uploads run in a worker process of their own (its
threads read the store read-only), so they never compete with the FUSE handlers for
the daemon's GIL.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worm_fs.audit.merkle import leaf_hash
from worm_fs.core.fs import WormCore
from worm_fs.core.model import Inode, State
from worm_fs.errors import WormError
from worm_fs.replication.layout_objects import ChunkHashes, file_layout_object, file_object
from worm_fs.replication.s3 import Bucket, BucketUrl
from worm_fs.replication.tiles import WIDTH, TileTree, entry_bundles
from worm_fs.store import ReadTxn, Store, WriteTxn, u64, uploads
from worm_fs.store.env import UPLOAD_PENDING_BYTES

log = logging.getLogger(__name__)

#: Longest wait between two failed rounds. A round against a bucket that is away costs
#: one refused connection (or one timeout), so a short cap costs little, and the queue
#: starts draining within seconds of the bucket's return.
MAX_BACKOFF_S = 5.0

CHUNK_OBJECT, FILE_OBJECT, LOG_OBJECT = uploads.CHUNK, uploads.FILE, uploads.LOG
#: meta counters and facts
UPLOADED_OBJECTS = "uploaded_objects"
UPLOADED_BYTES = "uploaded_bytes"
LOG_UPLOADED = "log_uploaded_size"
LAST_ERROR = "upload_last_error"

#: Queued names taken per round (oldest first).
BATCH = 256
#: The size an upload reports for a name whose object was gone (nothing uploaded).
GONE = -1
#: Worker processes, each with its own upload threads.
PROCESSES = 1


@dataclass
class Progress:
    """What the uploader did since the daemon started (the store keeps the totals)."""

    uploaded_objects: int = 0
    uploaded_bytes: int = 0
    last_error: str = ""
    last_error_ns: int = 0
    errors: int = 0
    rounds: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class BucketConfig:
    """What a worker process needs to open the bucket (a boto3 client is not sent)."""

    url: str
    endpoint: str | None
    lock_mode: str | None
    retention_days: float

    @classmethod
    def of(cls, bucket: Bucket) -> BucketConfig:
        return cls(str(bucket.url), bucket.endpoint, bucket.lock_mode, bucket.retention_days)

    def open(self) -> Bucket:
        return Bucket(BucketUrl.parse(self.url), endpoint=self.endpoint,
                      lock_mode=self.lock_mode, retention_days=self.retention_days)


class UploadWorker:
    """The uploading itself, in a process of its own: HTTP, checksums and copies of chunk
    bytes would otherwise take the daemon's GIL from the FUSE handlers. It reads the
    store through its own read-only environment (LMDB readers in other processes are
    safe) and never writes it."""

    def __init__(self, state_dir: str, config: BucketConfig, workers: int) -> None:
        self.store = Store(Path(state_dir), readonly=True)
        self.bucket = config.open()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self.tree = TileTree()

    def objects(self, names: list[bytes]) -> list[tuple[bytes, int, ChunkHashes | None]]:
        """Upload them all, or fail at the first error: the rest of the batch is not
        tried (an unreachable bucket costs one timeout per thread, not per object)."""
        failed = threading.Event()

        def one(name: bytes) -> tuple[bytes, int, ChunkHashes | None] | None:
            if failed.is_set():
                return None
            try:
                return self._upload_one(name)
            except BaseException:
                failed.set()
                raise

        futures = [self.pool.submit(one, name) for name in names]
        results = []
        for future in futures:
            done = future.result()  # raises the first failure
            if done is not None:
                results.append(done)
        return results

    def _upload_one(self, name: bytes) -> tuple[bytes, int, ChunkHashes | None]:
        """Upload the object a queued name stands for (nothing if it is gone: a chunk
        freed or a file deleted since). For a layout, also what its ``chunk_hashes``
        record must say."""
        hashes = None
        with self.store.read() as rt:
            if name.startswith(CHUNK_OBJECT):
                data = rt.get_chunk(bytes.fromhex(name[len(CHUNK_OBJECT):].decode()))
                target = "chunks/" + name[len(CHUNK_OBJECT):].decode()
            else:
                ino_text, _, layout = name[len(FILE_OBJECT):].decode().partition("/")
                raw = rt.get_inode(int(ino_text))
                inode = Inode.from_bytes(raw) if raw else None
                data = None
                if inode is not None and inode.state is State.SEALED and inode.layout == layout:
                    data, hashes = file_layout_object(rt, inode)
                target = file_object(int(ino_text), layout)
        if data is None:
            return name, GONE, None
        self.bucket.put(target, data)
        return name, len(data), hashes

    def log(self, size: int) -> int | None:
        """Tiles and entry bundles up to tree ``size``, then its checkpoint; returns the
        bytes put, or None if the store no longer keeps that checkpoint (a transient
        one, replaced: the one that replaced it is queued, and the log uploaded so far
        must not count as reaching ``size``)."""
        with self.store.read() as rt:
            done = rt.get_counter(LOG_UPLOADED)
            note = rt.get_checkpoint(size)
            if note is None:
                return None
            if size <= done and done:
                return 0
            if self.tree.size > size:
                self.tree = TileTree()
            start = (min(done, self.tree.size) // WIDTH) * WIDTH
            records = []
            for seq, data in rt.iter_records(start):
                if seq >= size:
                    break
                records.append(data)
        if self.tree.size < size:
            self.tree.extend(leaf_hash(r) for r in records[self.tree.size - start:])
        bundles_from = (done // WIDTH) * WIDTH  # bundles full at ``done`` are up already
        objects = entry_bundles(records[bundles_from - start:], bundles_from) \
            + self.tree.tiles(size, done)
        nbytes = sum(len(body) for body in self.pool.map(lambda o: self._put(*o), objects))
        self.bucket.put(f"checkpoints/{size}", note)
        self.bucket.put("checkpoint", note)
        return nbytes + 2 * len(note)

    def _put(self, name: str, data: bytes) -> bytes:
        self.bucket.put(name, data)
        return data


_worker: UploadWorker | None = None


def _start_worker(state_dir: str, config: BucketConfig, workers: int) -> None:
    global _worker
    try:  # die with the daemon (PR_SET_PDEATHSIG), even after its kill -9
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # writers first: the bucket may fall behind, they must not
    _worker = UploadWorker(state_dir, config, workers)


def _upload_objects(names: list[bytes]) -> list[tuple[bytes, int]]:
    assert _worker is not None
    return _worker.objects(names)


def _upload_log(size: int) -> int | None:
    assert _worker is not None
    return _worker.log(size)


def _ready() -> bool:
    return _worker is not None


class Uploader:
    """Drains the upload queue into the bucket; see the module docstring. Runs in the
    daemon: takes queued names, has an :class:`UploadWorker` process upload them, and
    drops them from the queue through the committer."""

    def __init__(self, core: WormCore, bucket: Bucket, *, workers: int = 8,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.core = core
        self.bucket = bucket
        self.clock = clock
        self.workers = workers
        self.progress = Progress()
        self._pool = self._new_pool()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._error_noted_ns = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=PROCESSES, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(self.core.store.path), BucketConfig.of(self.bucket), self.workers))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for _ in range(PROCESSES):  # start the workers now, not at the first upload
            self._pool.submit(_ready)
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the queue now rather than after the idle wait (any thread)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop at once: what is not uploaded stays queued for the next start. The worker
        is terminated rather than waited for (a slow bucket must not hold an unmount)."""
        self._stop.set()
        self._wake.set()
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.terminate()  # the coordinator's wait then ends with BrokenProcessPool
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                did = self._round()
            except WormError as exc:
                self._failed(str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except BrokenProcessPool:
                if self._stop.is_set():
                    break
                self._failed("the upload process died; starting another")
                self._pool = self._new_pool()
                self._stop.wait(backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - the uploader must outlive a bug
                log.exception("uploader: unexpected error")
                self._failed(f"internal error: {exc!r}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 0.5
            if not did:
                self._wake.wait(0.2)
                self._wake.clear()

    def _round(self) -> bool:
        """Upload the oldest names queued (up to BATCH); False when the queue was empty."""
        taken: dict[bytes, int] = {}  # name -> when it was queued
        with self.core.store.read() as rt:
            chunks, files, logs = _take_oldest(rt, taken)
        if not taken:
            return False
        uploaded = 0
        hashes: list[ChunkHashes] = []
        nbytes = 0
        log_size = None
        for group in (chunks, files):  # a file's chunks before its layout
            halves = [group[i::PROCESSES] for i in range(PROCESSES)]
            for future in [self._pool.submit(_upload_objects, h) for h in halves if h]:
                for _name, size, file_hashes in future.result():
                    if size == GONE:  # dropped from the queue all the same
                        continue
                    uploaded += 1
                    nbytes += size
                    if file_hashes is not None:
                        hashes.append(file_hashes)
        if logs:  # only the newest checkpoint matters; the older ones go with it
            # Last: readers trust what the checkpoint covers, so every layout and chunk
            # its seal records name must be in the bucket before it.
            log_size = int(logs[-1][len(LOG_OBJECT):])
            sent = self._pool.submit(_upload_log, log_size).result()
            if sent is None:  # replaced since: the log did not reach log_size
                log_size = None
            else:
                nbytes += sent
                uploaded += len(logs)
        self._finish(taken, uploaded, nbytes, log_size, hashes)
        return True

    def _finish(self, taken: dict[bytes, int], uploaded: int, nbytes: int,
                log_size: int | None, hashes: list[ChunkHashes]) -> None:
        """Drop the round's names from the queue (each only as it was taken: one queued
        again meanwhile stays) and count what was uploaded, in one committer job."""
        def job(tx: WriteTxn, batch: Any) -> None:
            for h in hashes:  # the per-chunk SHA-256s in the layouts just put, vouched for
                batch.add(self.core.log.stamp("chunk_hashes", ino=h.ino, layout=h.layout,
                                              chunks_sha256=h.digest))
            if tx.get_meta(LAST_ERROR) is not None:  # uploads work again
                tx.raw_delete("meta", LAST_ERROR.encode())
            for name, queued_ns in taken.items():
                tx.done_upload(name, queued_ns)
            tx.add_counter(UPLOADED_OBJECTS, uploaded)
            tx.add_counter(UPLOADED_BYTES, nbytes)
            if log_size is not None and log_size > tx.get_counter(LOG_UPLOADED):
                tx.put_meta(LOG_UPLOADED, u64(log_size))

        self.core.commit(job)
        self._error_noted_ns = 0
        with self.progress.lock:
            self.progress.last_error = ""
            self.progress.uploaded_objects += uploaded
            self.progress.uploaded_bytes += nbytes
            self.progress.rounds += 1

    def _failed(self, message: str) -> None:
        now = self.clock()
        with self.progress.lock:
            self.progress.last_error, self.progress.last_error_ns = message, now
            self.progress.errors += 1
        log.warning("upload to %s failed: %s", self.bucket.url, message)
        if now - self._error_noted_ns > 10 * 10**9:  # durable, at most every 10 s
            self._error_noted_ns = now
            text = json.dumps({"error": message, "time_ns": now}).encode()
            try:
                self.core.commit(lambda tx, batch: tx.put_meta(LAST_ERROR, text))
            except WormError:
                pass


def _take_oldest(rt: ReadTxn, taken: dict[bytes, int]
                 ) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The BATCH oldest queued names, as chunks, layouts and checkpoints; each noted
    in ``taken`` with when it was queued.

    The queue's age order is commit order, and a commit queues a layout after its
    file's chunks, a checkpoint after the seals it covers. So what these take, uploaded
    chunks first, layouts next, the log last, never names an object the bucket lacks
    (everything queued before it is in the bucket or in this round), and a long queue
    of newer chunks cannot hold back an older seal or the log.
    """
    kinds: dict[bytes, list[bytes]] = {CHUNK_OBJECT: [], FILE_OBJECT: [], LOG_OBJECT: []}
    for name, queued_ns, _ in rt.iter_uploads_by_age():
        if len(taken) >= BATCH:
            break
        kinds[name[:2]].append(name)
        taken[name] = queued_ns
    return kinds[CHUNK_OBJECT], kinds[FILE_OBJECT], kinds[LOG_OBJECT]


def queue_status(rt: ReadTxn, now_ns: int) -> dict[str, Any]:
    """``replication status`` numbers from the store (the daemon need not run)."""
    oldest = rt.oldest_upload_ns()
    raw = rt.get_meta(LAST_ERROR)
    last = json.loads(raw) if raw else {}
    bucket = rt.get_meta(uploads.BUCKET_META)
    return {
        "bucket": bucket.decode() if bucket else None,
        "pending_objects": rt.count_uploads(),
        "pending_bytes": rt.get_counter(UPLOAD_PENDING_BYTES),
        "lag_seconds": round(max(0, now_ns - oldest) / 1e9, 3) if oldest else 0.0,
        "uploaded_objects": rt.get_counter(UPLOADED_OBJECTS),
        "uploaded_bytes": rt.get_counter(UPLOADED_BYTES),
        "log_uploaded_size": rt.get_counter(LOG_UPLOADED),
        "last_error": last.get("error", ""),
    }


def queue_existing(core: WormCore, url: str, *, log_only: bool = False) -> int:
    """When a store starts replicating to ``url`` (a bucket it did not replicate to
    before): queue everything already stored, in one committer job (``log_only``: the
    log alone, a replica's). Returns how many names were queued."""
    with core.store.read() as rt:
        if (rt.get_meta(uploads.BUCKET_META) or b"").decode() == url:
            return 0
        chunks = [] if log_only else [(key, len(data)) for key, data in rt.iter_chunks()]
        files = [] if log_only else [
            (inode.ino, inode.layout) for inode in
            (Inode.from_bytes(raw) for _, raw in rt.iter_inodes())
            if inode.state is State.SEALED and inode.layout]
        newest = max((size for size, _ in rt.iter_checkpoints()), default=None)

    def job(tx: WriteTxn, batch: Any) -> None:
        tx.restamp_uploads()  # what was queued before goes in kind order with the rest
        for key, size in chunks:
            tx.queue_upload(uploads.chunk_name(key), size)
        for ino, layout in files:
            tx.queue_upload(uploads.file_name(ino, layout), 0)
        if newest is not None:
            tx.queue_upload(uploads.log_name(newest), 0)
        tx.put_meta(uploads.BUCKET_META, url.encode())
        tx.put_meta(LOG_UPLOADED, u64(0))  # a new bucket holds none of the log yet

    core.commit(job)
    return len(chunks) + len(files) + (newest is not None)
