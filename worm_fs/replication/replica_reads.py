"""A replica's file bytes: fetched from the bucket, verified, cached.

Chunk keys are XXH3 digests: good against damage, not against someone who can put a
new version of ``chunks/<key>`` in the bucket and chooses its bytes. Each chunk is
therefore checked against a SHA-256 the signed log vouches for, from one of two places:

* the ``chunk_hashes`` record the primary logs once it has uploaded a file's layout
  object, whose ``chunk_sha256`` list it binds (the follower checks it and stores the
  list, :mod:`.chunk_cache`): then chunks are fetched and checked one by one as the
  reader goes, and the first byte comes after one chunk;
* else the file's sealed SHA-256: before the first byte is served the whole file is
  fetched (parallel GETs, in order), its SHA-256 compared with the sealed one, and the
  SHA-256 of each chunk remembered. Time to first byte is then the time to fetch the
  whole file (files sealed before the primary logged chunk hashes, or whose record has
  not reached the replica yet).

A chunk fetched again later (evicted meanwhile) must match its SHA-256. Only chunks
checked against a SHA-256 enter the cache: a whole-file check keeps none of what it
fetched (checked against their keys alone until the whole file matches), so the reads
after it fetch again, each chunk checked against its own SHA-256. That costs files
without a ``chunk_hashes`` record a second download, and keeps the cache free of bytes
that a crash or a failed check would leave unchecked. A file that
fails is refused with EIO (:class:`~worm_fs.errors.UntrustedData`) and reported; other
files are served as before. A chunk whose newest version fails its
check is read from the newest older version that passes (:mod:`.pinned`; with Object
Lock the original is still there) and reported through ``on_replaced``.

Every read keeps up to READ_AHEAD chunks of the same file fetched ahead of it (at most
a quarter of the cache).
Concurrent readers of the same chunk share one fetch; concurrent first readers of a
file share one verification.

Concurrency: :meth:`ReplicaChunks.chunk` blocks (network) and is called from the core's
read path in worker threads; one lock guards the in-flight tables, never held while
fetching. The chunk keys and verified SHA-256s of the files read last are kept in
memory (a read looks up one inode, not the whole manifest).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from worm_fs.core.model import Inode, Kind, State
from worm_fs.errors import NotFound, UntrustedData
from worm_fs.replication.chunk_cache import ChunkCache
from worm_fs.replication.pinned import get_pinned
from worm_fs.replication.s3 import Bucket
from worm_fs.store import CHUNK_SIZE, Store
from worm_fs.store.chunks import DIGEST_LEN, digest

log = logging.getLogger(__name__)

#: Chunk GETs in flight at once (each at most 1 MiB).
PARALLEL = 32
#: Files whose chunk keys and SHA-256s stay in memory (about 50 bytes per chunk).
FILES_REMEMBERED = 256
#: Chunks fetched ahead of a sequential reader.
READ_AHEAD = 32


def chunk_object(key: bytes) -> str:
    return f"chunks/{key.hex()}"


class ReplicaChunks:
    """The :class:`~worm_fs.core.base.ChunkSource` of a replica."""

    def __init__(self, store: Store, bucket: Bucket, cache: ChunkCache, *,
                 on_refused: Callable[[str, str], None] | None = None,
                 on_replaced: Callable[[str, str], None] | None = None,
                 parallel: int = PARALLEL) -> None:
        self.store = store
        self.bucket = bucket
        self.cache = cache
        self.on_refused = on_refused
        self.on_replaced = on_replaced
        self.replaced_objects = 0
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fetch")
        # never more ahead than a quarter of the cache: read-ahead must not evict itself
        self._ahead = max(1, min(READ_AHEAD, cache.limit // (4 * CHUNK_SIZE)))
        self._lock = threading.Lock()
        self._fetches: dict[bytes, Future[bytes]] = {}
        self._verifying: dict[tuple[int, str], Future[list[bytes]]] = {}
        # (ino, layout) -> (chunk keys, verified SHA-256s or None), most recent last
        self._files: OrderedDict[tuple[int, str], tuple[list[bytes], list[bytes] | None]] = \
            OrderedDict()
        self.fetched_bytes = 0
        self.refused_files = 0
        self._replaced: set[str] = set()  # objects read from an older version

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.bucket.close()

    # ------------------------------------------------------------------ the read path
    def chunk(self, ino: int, index: int, key: bytes) -> bytes:
        inode, keys, shas = self._file(ino)
        if shas is None:
            shas = self._verified(inode, keys)
        if index >= len(keys) or keys[index] != key:
            raise UntrustedData(f"inode {ino}: chunk {index} is not in its verified layout")
        data = self.cache.get(key)
        if data is None:
            # the chunk asked for first, alone: fetches started beside it would share
            # the bandwidth and delay it (the first byte of a file)
            data = self._fetch(key, shas[index]).result()
        # Then keep the window ahead full (on hits too), from a fetch thread: starting
        # fetches (and their threads) here would hold up the bytes this read waits for.
        self._pool.submit(self._read_ahead, keys, shas, index + 1)
        return data

    def _file(self, ino: int) -> tuple[Inode, list[bytes], list[bytes] | None]:
        """The sealed inode, its chunk keys and, if known, its verified SHA-256s."""
        with self.store.read() as rt:
            raw = rt.get_inode(ino)
            if raw is None:
                raise NotFound(f"inode {ino} does not exist")
            inode = Inode.from_bytes(raw)
            if inode.kind is not Kind.FILE or inode.state is not State.SEALED:
                raise UntrustedData(f"inode {ino} is not a sealed file")
            ident = (ino, inode.layout)
            with self._lock:
                known = self._files.get(ident)
                if known is not None:
                    self._files.move_to_end(ident)
            if known is None:
                known = ([key for _, key in rt.iter_manifest(ino)], None)
                self._remember(ident, *known)
        return inode, known[0], known[1]

    def _remember(self, ident: tuple[int, str], keys: list[bytes],
                  shas: list[bytes] | None) -> None:
        with self._lock:
            self._files[ident] = (keys, shas)
            self._files.move_to_end(ident)
            while len(self._files) > FILES_REMEMBERED:
                self._files.popitem(last=False)

    def forget(self, ino: int, layout: str) -> None:
        """A deleted file: its keys and SHA-256s leave memory and the cache."""
        with self._lock:
            self._files.pop((ino, layout), None)
        self.cache.forget_file(ino, layout)

    def _verified(self, inode: Inode, keys: list[bytes]) -> list[bytes]:
        """The per-chunk SHA-256s of a file whose bytes matched its sealed SHA-256,
        verifying it first (once, shared by concurrent callers)."""
        ident = (inode.ino, inode.layout)
        shas = self.cache.verified(inode.ino, inode.layout)
        if shas is not None and len(shas) == len(keys):
            self._remember(ident, keys, shas)
            return shas
        with self._lock:
            future = self._verifying.get(ident)
            mine = future is None
            if mine:
                future = self._verifying[ident] = Future()
        assert future is not None
        if not mine:
            return future.result()
        try:
            shas = self._verify(inode, keys)
            self.cache.set_verified(inode.ino, inode.layout, shas)
            self._remember(ident, keys, shas)
            future.set_result(shas)
            return shas
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._verifying.pop(ident, None)

    def _verify(self, inode: Inode, keys: list[bytes]) -> list[bytes]:
        """The file's per-chunk SHA-256s if its chunks give its sealed SHA-256 (what it
        fetches is not cached: see the module docstring)."""
        whole = hashlib.sha256()
        shas: list[bytes] = []
        window: list[Future[bytes]] = []
        ahead = 0
        for index, _key in enumerate(keys):
            while ahead < len(keys) and ahead < index + 2 * PARALLEL:
                window.append(self._pool.submit(self._load, keys[ahead]))
                ahead += 1
            data = window.pop(0).result()
            whole.update(data)
            shas.append(hashlib.sha256(data).digest())
        if whole.hexdigest() != inode.sha256:
            self.refused_files += 1
            raise self._refuse(f"files/{inode.ino}-{inode.layout}.json",
                               f"the chunks of inode {inode.ino} do not give its sealed "
                               "SHA-256: a chunk object in the bucket was replaced")
        return shas

    def _refuse(self, name: str, detail: str) -> UntrustedData:
        """Report bytes from the bucket that failed their check; the error to raise."""
        if self.on_refused:
            self.on_refused(name, detail)
        return UntrustedData(f"{name}: {detail}")

    def _load(self, key: bytes) -> bytes:
        """A chunk from the cache (checked before it entered), else fetched and checked
        against its key only: not cached."""
        data = self.cache.get(key)
        return data if data is not None else self._get(key)

    def _get(self, key: bytes, sha: bytes | None = None) -> bytes:
        """Chunk ``key`` from the bucket: the newest version that matches its key and,
        if given, the SHA-256 its file was verified with (older versions are tried when
        a newer one fails: :mod:`.pinned`)."""
        name = chunk_object(key)

        def matches(data: bytes) -> bool:
            if sha is not None:  # the log's SHA-256 says more than the key (and the
                return hashlib.sha256(data).digest() == sha  # core checks that anyway)
            return digest(data) == key[:DIGEST_LEN]

        pinned = get_pinned(self.bucket, name, matches)
        if pinned.data is None:
            if not pinned.failed:
                raise self._refuse(name, "missing from the bucket")
            raise self._refuse(name, "no version of it matches its key" if sha is None
                               else "no version of it matches the chunk its file was "
                               "verified with (a replaced object)")
        if pinned.failed:
            with self._lock:  # once per object: a whole-file check and the read after it
                known = name in self._replaced  # both meet it
                self._replaced.add(name)
                self.replaced_objects += not known
            if self.on_replaced and not known:
                self.on_replaced(name, f"{pinned.failed} newer version(s) fail their "
                                 f"check; served version {pinned.version_id}")
        with self._lock:
            self.fetched_bytes += len(pinned.data)
        return pinned.data

    def _fetch(self, key: bytes, sha: bytes) -> Future[bytes]:
        """One fetch of a chunk of a verified file, shared by concurrent readers."""
        with self._lock:
            future = self._fetches.get(key)
            if future is not None:
                return future
            future = self._fetches[key] = self._pool.submit(self._fetch_checked, key, sha)
        return future

    def _fetch_checked(self, key: bytes, sha: bytes) -> bytes:
        try:
            data = self._get(key, sha)
            self.cache.put(key, data)
            return data
        finally:
            with self._lock:
                self._fetches.pop(key, None)

    def _read_ahead(self, keys: list[bytes], shas: list[bytes], start: int) -> None:
        for index in range(start, min(start + self._ahead, len(keys))):
            if not self.cache.holds(keys[index]):
                self._fetch(keys[index], shas[index])

    def stats(self) -> dict[str, int | float]:
        return {**self.cache.stats(), "fetched_bytes": self.fetched_bytes,
                "refused_files": self.refused_files,
                "replaced_chunks": self.replaced_objects}
