"""The LMDB environment and typed transactions over its named databases.

This package is the only place that imports :mod:`lmdb`. Everything above it sees
:class:`Store`, :class:`ReadTxn` and :class:`WriteTxn`, whose methods are named after
what they hold (inodes, directory entries, manifests, chunks, the audit log, ...).

Contracts:

* A write transaction is opened, used and committed on one thread, inside ``with``;
  nothing may ``await`` while one is open (the core is synchronous, so this holds by
  construction).
* While serving, one thread owns write transactions (the core's committer): after
  :meth:`Store.set_writer_thread`, :meth:`Store.write` on any other thread raises.
  Before that (recovery) and after it is cleared, any one thread at a time may write.
* Commits are synced (no ``NOSYNC``/``NOMETASYNC``/``MAPASYNC``/``WRITEMAP``): when
  ``Store.write()`` returns, the change is on disk.
* LMDB failures surface as :class:`~worm_fs.errors.NoSpace` (full map or disk) or
  :class:`~worm_fs.errors.StorageError`; the transaction is aborted and nothing of it
  is visible.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from worm_fs.errors import Corruption, NoSpace, StorageError
from worm_fs.store.keys import matches_key
from worm_fs.store.places import ChunkFile, decode_place, encode_place, place_of
from worm_fs.store.records import RecordFormatError, decode_record, encode_record

#: Address space reserved for the map. Without WRITEMAP the data file grows only as
#: pages are used, so a large reservation costs nothing on disk.
DEFAULT_MAP_SIZE = 1 << 40

log = logging.getLogger(__name__)

#: A commit that fails with this little room left is taken for a full disk.
LOW_SPACE_BYTES = 64 << 20
#: The data file is kept allocated this far ahead of LMDB's last page, in steps.
PREALLOCATE_AHEAD = 128 << 20
PREALLOCATE_STEP = 256 << 20

_DATABASES = (
    "inodes",  # ino (u64) -> encoded inode
    "dirents",  # parent ino (u64) + name -> child ino (u64)
    "manifests",  # ino (u64) + chunk index (u64) -> chunk key
    "chunks",  # chunk key -> chunk bytes
    "refs",  # chunk key -> reference count (u64)
    "writing",  # ino (u64) -> b"" for every file not yet sealed or quarantined
    "audit",  # seq (u64) -> record, stored encoded (records.py)
    "checkpoints",  # tree size (u64) -> signed checkpoint note
    "deletions",  # request id -> encoded request
    "meta",  # name -> value (schema version, counters, key ids)
    "uploads",  # bucket object name -> u64 time queued + u64 size (replication queue)
    "upload_order",  # u64 time queued + object name -> u64 size (the queue, oldest first)
    "chunk_places",  # chunk key -> u64 offset + u32 length in the data file (places.py)
    "file_places",  # ino (u64) + chunk index (u64) -> the place of the chunk it names
)

#: The database of places kept for the rows of another (``places.py``).
_PLACES_OF = {"chunks": "chunk_places", "manifests": "file_places"}
#: Databases a store made by an older version lacks until a daemon opens it.
_ADDED_LATER = frozenset({"uploads", "upload_order", "chunk_places", "file_places"})
_U64 = struct.Struct(">Q")
#: meta counter: bytes queued for upload.
UPLOAD_PENDING_BYTES = "upload_pending_bytes"


def u64(n: int) -> bytes:
    """Encode ``n`` as 8 big-endian bytes (keys sort numerically)."""
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


class ReadTxn:
    """A read-only view of the store at one point in time."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database],
                 chunk_file: ChunkFile | None = None) -> None:
        self._txn = txn
        self._db = dbs
        self._chunk_file = chunk_file

    # -- inodes ---------------------------------------------------------------------
    def get_inode(self, ino: int) -> bytes | None:
        return self._txn.get(u64(ino), db=self._db["inodes"])

    def iter_inodes(self) -> Iterator[tuple[int, bytes]]:
        with self._txn.cursor(db=self._db["inodes"]) as cur:
            for key, value in cur:
                yield from_u64(key), value

    def iter_writing(self) -> list[int]:
        with self._txn.cursor(db=self._db["writing"]) as cur:
            return [from_u64(k) for k, _ in cur]

    # -- directory entries ----------------------------------------------------------
    def get_dirent(self, parent: int, name: bytes) -> int | None:
        value = self._txn.get(u64(parent) + name, db=self._db["dirents"])
        return None if value is None else from_u64(value)

    def iter_dirents(self, parent: int, after: bytes | None = None) -> Iterator[tuple[bytes, int]]:
        """Entries of ``parent`` in name order, starting after ``after`` if given."""
        prefix = u64(parent)
        with self._txn.cursor(db=self._db["dirents"]) as cur:
            if not cur.set_range(prefix + (after or b"")):
                return
            for key, value in cur:
                if not key.startswith(prefix):
                    return
                name = key[8:]
                if after is not None and name == after:
                    continue
                yield name, from_u64(value)

    # -- manifests and chunks -------------------------------------------------------
    def get_manifest(self, ino: int, index: int) -> bytes | None:
        return self._txn.get(u64(ino) + u64(index), db=self._db["manifests"])

    def iter_manifest(self, ino: int) -> Iterator[tuple[int, bytes]]:
        prefix = u64(ino)
        with self._txn.cursor(db=self._db["manifests"]) as cur:
            if not cur.set_range(prefix):
                return
            for key, value in cur:
                if not key.startswith(prefix):
                    return
                yield from_u64(key[8:]), value

    def _place(self, key: bytes) -> tuple[int, int] | None:
        """The recorded place of a chunk this transaction holds (its pages cannot be
        reused while the transaction is open), else None."""
        if self._chunk_file is None or "chunk_places" not in self._db:
            return None
        raw = self._txn.get(key, db=self._db["chunk_places"])
        if raw is None:
            return None
        with self._txn.cursor(db=self._db["chunks"]) as cur:
            if not cur.set_key(key):  # positions on the key; the value is not read
                return None
        return decode_place(raw)

    def chunk_places(self, keys: list[bytes]) -> list[tuple[int, int] | None]:
        """The recorded place of each of ``keys`` in the data file (``places.py``)."""
        return [self._place(key) for key in keys]

    def get_chunk(self, key: bytes) -> bytes | None:
        """Chunk ``key``'s stored bytes; see :meth:`fetch_chunk`."""
        return self.fetch_chunk(key)[0]

    def fetch_chunk(self, key: bytes) -> tuple[bytes | None, bool]:
        """(chunk ``key``'s stored bytes or None, whether they were checked against the
        key). A chunk with a recorded place (``places.py``) is read there and checked;
        bytes there that do not match (a bug, or a bad disk) are not returned: LMDB's
        own copy is, unchecked, like any chunk read through the map."""
        place = self._place(key)
        if place is not None:
            data = self._chunk_file.read(*place)  # type: ignore[union-attr]
            if data is not None and matches_key(key, data):
                return data, True
            log.warning("chunk %s was not at its recorded place", key.hex())
        return self.get_chunk_from_map(key), False

    def get_chunk_from_map(self, key: bytes) -> bytes | None:
        """Chunk ``key``'s stored bytes as LMDB itself reads them (unverified)."""
        return self._txn.get(key, db=self._db["chunks"])

    def chunk_size(self, key: bytes) -> int | None:
        """The length of chunk ``key`` (None if not stored), not read if it is placed."""
        place = self._place(key)
        if place is not None:
            return place[1]
        data = self.get_chunk_from_map(key)
        return None if data is None else len(data)

    def file_places(self, ino: int) -> dict[int, tuple[int, int]]:
        """The recorded places of file ``ino``'s chunks, by index (in file order: the
        lookup reads a few neighbouring B-tree pages, not one per chunk)."""
        if self._chunk_file is None or "file_places" not in self._db:
            return {}
        prefix = u64(ino)
        out: dict[int, tuple[int, int]] = {}
        with self._txn.cursor(db=self._db["file_places"]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                place = decode_place(value)
                if place is not None:
                    out[from_u64(key[8:])] = place
        return out

    def read_file_chunk_at(self, ino: int, index: int, place: tuple[int, int], *,
                           resident_only: bool = False) -> bytes | bytearray | None:
        """Chunk ``index`` of file ``ino`` at ``place`` (from :meth:`file_places`, maybe
        of an earlier transaction) if this transaction still records that place for
        it: the manifest row then names the chunk, which therefore exists, and LMDB
        cannot reuse its pages while this transaction is open. None if not, or
        (``resident_only``) if any of it is not in the page cache. Unverified."""
        if self._chunk_file is None or "file_places" not in self._db:
            return None
        raw = self._txn.get(u64(ino) + u64(index), db=self._db["file_places"])
        if raw is None or decode_place(raw) != place:
            return None
        if resident_only:
            return self._chunk_file.read_resident(*place)
        return self._chunk_file.read(*place)

    def prefetch(self, places: list[tuple[int, int] | None]) -> None:
        """Start reading ``places`` into the page cache (a hint; returns at once)."""
        if self._chunk_file is not None:
            self._chunk_file.prefetch([place for place in places if place is not None])

    def iter_chunks(self) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._db["chunks"]) as cur:
            yield from cur

    def get_ref(self, key: bytes) -> int:
        value = self._txn.get(key, db=self._db["refs"])
        return 0 if value is None else from_u64(value)

    # -- audit log ------------------------------------------------------------------
    # Records go in and come out as their canonical bytes; the store keeps a compact
    # encoding of them (:mod:`worm_fs.store.records`). A value that cannot be decoded
    # raises Corruption; the ``stored`` variants give the values as stored.
    def get_record(self, seq: int) -> bytes | None:
        value = self.get_stored_record(seq)
        return None if value is None else _decoded(seq, value)

    def iter_records(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        for seq, value in self.iter_stored_records(start):
            yield seq, _decoded(seq, value)

    def get_stored_record(self, seq: int) -> bytes | None:
        return self._txn.get(u64(seq), db=self._db["audit"])

    def iter_stored_records(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        with self._txn.cursor(db=self._db["audit"]) as cur:
            if not cur.set_range(u64(start)):
                return
            for key, value in cur:
                yield from_u64(key), value

    def get_checkpoint(self, size: int) -> bytes | None:
        return self._txn.get(u64(size), db=self._db["checkpoints"])

    def newest_checkpoint(self) -> tuple[int, bytes] | None:
        """The checkpoint of the largest tree size kept, or None."""
        with self._txn.cursor(db=self._db["checkpoints"]) as cur:
            if not cur.last():
                return None
            return from_u64(cur.key()), cur.value()

    def iter_checkpoints(self) -> Iterator[tuple[int, bytes]]:
        with self._txn.cursor(db=self._db["checkpoints"]) as cur:
            for key, value in cur:
                yield from_u64(key), value

    # -- deletion requests ----------------------------------------------------------
    def get_deletion(self, request_id: bytes) -> bytes | None:
        return self._txn.get(request_id, db=self._db["deletions"])

    def iter_deletions(self) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=self._db["deletions"]) as cur:
            yield from cur

    # -- metadata -------------------------------------------------------------------
    def get_meta(self, name: str) -> bytes | None:
        return self._txn.get(name.encode(), db=self._db["meta"])

    def iter_meta(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Metadata entries whose names start with ``prefix``."""
        raw = prefix.encode()
        with self._txn.cursor(db=self._db["meta"]) as cur:
            if not cur.set_range(raw):
                return
            for key, value in cur:
                if not key.startswith(raw):
                    return
                yield key.decode(), value

    def get_counter(self, name: str) -> int:
        value = self.get_meta(name)
        return 0 if value is None else from_u64(value)

    # -- the replication queue ------------------------------------------------------
    def iter_uploads(self, after: bytes = b"") -> Iterator[tuple[bytes, int, int]]:
        """Queued object names in name order (after ``after``), with the time each was
        queued (ns) and its size in bytes."""
        if "uploads" not in self._db:
            return
        with self._txn.cursor(db=self._db["uploads"]) as cur:
            if not cur.set_range(after):
                return
            for key, value in cur:
                if key == after:
                    continue
                yield key, from_u64(value[:8]), from_u64(value[8:16])

    def iter_uploads_by_age(self) -> Iterator[tuple[bytes, int, int]]:
        """Queued object names oldest first (names queued in one transaction: in name
        order), with the time each was queued (ns) and its size in bytes."""
        if "upload_order" not in self._db:
            return
        with self._txn.cursor(db=self._db["upload_order"]) as cur:
            for key, value in cur:
                yield key[8:], from_u64(key[:8]), from_u64(value)

    def oldest_upload_ns(self) -> int | None:
        """When the oldest queued name was queued (None: the queue is empty)."""
        if "upload_order" not in self._db:
            return None
        with self._txn.cursor(db=self._db["upload_order"]) as cur:
            return from_u64(cur.key()[:8]) if cur.first() else None

    def upload_queued(self, name: bytes) -> bool:
        """Whether bucket object ``name`` is still waiting for its upload."""
        if "uploads" not in self._db:
            return False
        return self._txn.get(name, db=self._db["uploads"]) is not None

    def count_uploads(self) -> int:
        if "uploads" not in self._db:
            return 0
        return int(self._txn.stat(self._db["uploads"])["entries"])


class WriteTxn(ReadTxn):
    """A read-write transaction; see the module docstring for its contract."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database],
                 replicating: bool = False,
                 queue_clock: Callable[[], int] = time.time_ns,
                 chunk_file: ChunkFile | None = None) -> None:
        # Placed reads are safe here too: a chunk this transaction can see is not freed,
        # and one it frees loses its place in the same transaction.
        super().__init__(txn, dbs, chunk_file)
        self.replicating = replicating
        self._queue_clock = queue_clock
        self._queued_ns: int | None = None
        #: Keys of the chunks this transaction stored (their places are taken after
        #: the commit), and its manifest changes in order: (ino, index, key or None).
        self.stored_chunks: list[bytes] = []
        self.manifest_changes: list[tuple[int, int, bytes | None]] = []

    def queue_upload(self, name: bytes, size: int) -> None:
        """Queue bucket object ``name`` for upload, in this transaction (a no-op unless
        the store replicates). Queuing a name twice keeps one entry.

        Every name queued by one transaction gets the same time, later than any of an
        earlier commit's: the queue's age order is the order of commits, so whatever a
        commit queues (a seal's layout, a checkpoint) comes after everything it builds
        on (the file's chunks, the seal)."""
        if not self.replicating:
            return
        if self._queued_ns is None:
            self._queued_ns = self._queue_clock()
        stamp = u64(self._queued_ns)
        if self._txn.put(name, stamp + u64(size), db=self._db["uploads"], overwrite=False):
            self._txn.put(stamp + name, u64(size), db=self._db["upload_order"])
            self.add_counter(UPLOAD_PENDING_BYTES, size)

    def restamp_uploads(self) -> None:
        """Give every queued name this transaction's stamp (a store starting to replicate
        to a new bucket: what it queues now must not sort after what was queued
        before, such as a recovered seal's layout)."""
        if not self.replicating:
            return
        if self._queued_ns is None:
            self._queued_ns = self._queue_clock()
        _restamp_queue(self._txn, self._db["uploads"], self._db["upload_order"],
                       self._queued_ns)

    def done_upload(self, name: bytes, queued_ns: int | None = None) -> None:
        """Drop ``name`` from the queue: uploaded, or what it stood for is gone. Given
        ``queued_ns`` (when the uploader took it), only that entry: a name queued
        again since (a freed chunk stored again) stays for the next upload."""
        if "uploads" not in self._db:
            return
        raw = self._txn.get(name, db=self._db["uploads"])
        if queued_ns is not None:  # the entry taken, whatever else changed since
            self._txn.delete(u64(queued_ns) + name, db=self._db["upload_order"])
        if raw is None or (queued_ns is not None and from_u64(raw[:8]) != queued_ns):
            return
        self._txn.delete(name, db=self._db["uploads"])
        self._txn.delete(raw[:8] + name, db=self._db["upload_order"])
        self.add_counter(UPLOAD_PENDING_BYTES, -from_u64(raw[8:16]))

    def put_inode(self, ino: int, value: bytes) -> None:
        self._txn.put(u64(ino), value, db=self._db["inodes"])

    def delete_inode(self, ino: int) -> None:
        self._txn.delete(u64(ino), db=self._db["inodes"])

    def set_writing(self, ino: int, writing: bool) -> None:
        if writing:
            self._txn.put(u64(ino), b"", db=self._db["writing"])
        else:
            self._txn.delete(u64(ino), db=self._db["writing"])  # no-op if absent

    def put_dirent(self, parent: int, name: bytes, child: int) -> None:
        self._txn.put(u64(parent) + name, u64(child), db=self._db["dirents"])

    def delete_dirent(self, parent: int, name: bytes) -> None:
        self._txn.delete(u64(parent) + name, db=self._db["dirents"])

    def put_manifest(self, ino: int, index: int, key: bytes) -> None:
        """Name chunk ``key`` as chunk ``index`` of ``ino``; the row's file place is
        the chunk's place if it has one already (else taken after the commit)."""
        row = u64(ino) + u64(index)
        self._txn.put(row, key, db=self._db["manifests"])
        place = self._txn.get(key, db=self._db["chunk_places"])
        if place is not None:
            self._txn.put(row, place, db=self._db["file_places"])
        else:
            self._txn.delete(row, db=self._db["file_places"])
        self.manifest_changes.append((ino, index, key))

    def delete_manifest(self, ino: int, index: int) -> None:
        row = u64(ino) + u64(index)
        self._txn.delete(row, db=self._db["manifests"])
        self._txn.delete(row, db=self._db["file_places"])
        self.manifest_changes.append((ino, index, None))

    def put_chunk(self, key: bytes, data: bytes) -> None:
        self._txn.put(key, data, db=self._db["chunks"])
        self.stored_chunks.append(key)

    def delete_chunk(self, key: bytes) -> None:
        self._txn.delete(key, db=self._db["chunks"])
        self._txn.delete(key, db=self._db["chunk_places"])

    def put_places(self, places: dict[bytes, bytes],
                   file_places: dict[bytes, bytes] | None = None) -> None:
        """Record chunk places taken after the previous commit, by chunk key and by
        manifest row (the store's job)."""
        for key, place in places.items():
            self._txn.put(key, place, db=self._db["chunk_places"])
        for row, place in (file_places or {}).items():
            self._txn.put(row, place, db=self._db["file_places"])

    def set_ref(self, key: bytes, count: int) -> None:
        if count:
            self._txn.put(key, u64(count), db=self._db["refs"])
        else:
            self._txn.delete(key, db=self._db["refs"])

    def put_record(self, seq: int, data: bytes, record: dict | None = None) -> int:
        """Store the canonical bytes ``data`` of record ``seq`` (``record``: the same,
        parsed, if at hand) in their compact encoding; returns the stored size."""
        value = encode_record(data, record)
        if not self._txn.put(u64(seq), value, db=self._db["audit"], overwrite=False):
            raise StorageError(f"audit record {seq} already exists")
        return len(value)

    def put_checkpoint(self, size: int, note: bytes) -> None:
        self._txn.put(u64(size), note, db=self._db["checkpoints"])

    def delete_checkpoint(self, size: int) -> None:
        self._txn.delete(u64(size), db=self._db["checkpoints"])

    def put_deletion(self, request_id: bytes, value: bytes) -> None:
        self._txn.put(request_id, value, db=self._db["deletions"])

    def put_meta(self, name: str, value: bytes) -> None:
        self._txn.put(name.encode(), value, db=self._db["meta"])

    def delete_meta(self, name: str) -> None:
        self._txn.delete(name.encode(), db=self._db["meta"])

    def add_counter(self, name: str, delta: int) -> int:
        value = max(0, self.get_counter(name) + delta)
        self.put_meta(name, u64(value))
        return value

    # -- test and fault-injection hooks -----------------------------------------------
    def raw_put(self, database: str, key: bytes, value: bytes) -> None:
        """Write any key of any database; for tests that simulate corruption. A chunk
        rewritten moves in the data file, a manifest row rewritten names another
        chunk: their places go."""
        self._txn.put(key, value, db=self._db[database])
        self._forget_places(database, key)

    def raw_delete(self, database: str, key: bytes) -> None:
        self._txn.delete(key, db=self._db[database])
        self._forget_places(database, key)

    def _forget_places(self, database: str, key: bytes) -> None:
        if database not in _PLACES_OF:
            return
        self._txn.delete(key, db=self._db[_PLACES_OF[database]])
        if database == "chunks":  # and the rows naming the chunk (a scan: tests only)
            with self._txn.cursor(db=self._db["manifests"]) as cur:
                rows = [row for row, named in cur if named == key]
            for row in rows:
                self._txn.delete(row, db=self._db["file_places"])


def _decoded(seq: int, value: bytes) -> bytes:
    try:
        return decode_record(value)
    except RecordFormatError as exc:
        raise Corruption(f"audit record {seq} cannot be decoded: {exc}") from None


_MADV_DONTNEED = 4
#: meta: the id of the last write transaction made by such a version (u64).
PLACES_TXN_META = b"places_stamp"


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def _find_mapping(data_file: Path) -> tuple[int, int] | None:
    """(start, length) of this process's mapping of ``data_file``, from /proc/self/maps."""
    target = str(data_file.resolve())
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(" " + target):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return start, end - start
    return None


def _file_places_of(changes: list[tuple[int, int, bytes | None]],
                    places: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The manifest rows a transaction left naming a chunk it stored, with that chunk's
    new place (rows naming a chunk placed before got it at ``put_manifest``)."""
    out: dict[bytes, bytes] = {}
    for ino, index, key in changes:
        row = u64(ino) + u64(index)
        if key is not None and key in places:
            out[row] = places[key]
        else:
            out.pop(row, None)
    return out


def _translate(exc: lmdb.Error) -> Exception:
    if isinstance(exc, lmdb.MapFullError):
        return NoSpace("the store's map is full")
    text = str(exc)
    if "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return NoSpace("no space left on the store's disk")
    return StorageError(f"store error: {text}")


def _restamp_queue(txn: lmdb.Transaction, uploads: lmdb._Database,
                   order: lmdb._Database, stamp: int) -> None:
    """Give every queued name the time ``stamp`` and rebuild ``upload_order`` from
    ``uploads``; sizes and the pending-bytes counter stay as they are."""
    with txn.cursor(db=uploads) as cur:
        entries = [(name, bytes(value)) for name, value in cur]
    txn.drop(order, delete=False)
    for name, value in entries:
        txn.put(name, u64(stamp) + value[8:16], db=uploads)
        txn.put(u64(stamp) + name, value[8:16], db=order)


class Store:
    """One LMDB environment in a state directory.

    ``readonly`` opens it for inspection (the CLI) next to a running daemon; LMDB
    allows that across processes.
    """

    def __init__(
        self, path: Path, *, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._map_size = map_size
        self._reopen_lock = threading.Lock()
        self._map_range: tuple[int, int] | None = None
        #: The only thread allowed to write while serving (None: any).
        self._writer_thread: int | None = None
        #: Whether transactions queue what they store for upload to a bucket.
        self.replicating = False
        self._stamp_lock = threading.Lock()
        self._last_queued_ns = 0
        #: Held from a write transaction's begin to the places taken after its commit,
        #: so the places are exact when the next transaction writes them.
        self._write_lock = threading.Lock()
        #: Places of the chunks the last commit stored, for the next one to record.
        self._pending_places: dict[bytes, bytes] = {}
        self._pending_file_places: dict[bytes, bytes] = {}
        self._chunk_file: ChunkFile | None = None
        self._places_trusted = False
        self._open()

    def _open(self) -> None:
        try:
            self._env = lmdb.open(
                str(self.path / "store"),
                map_size=self._map_size,
                max_dbs=len(_DATABASES) + 2,
                max_readers=1024,
                subdir=True,
                readonly=self.readonly,
                sync=True,
                metasync=True,
                writemap=False,
                map_async=False,
                readahead=True,  # see _check_places
                create=not self.readonly,
                mode=0o700,
            )
        except lmdb.Error as exc:
            raise _translate(exc) from None
        dbs: dict[str, lmdb._Database] = {}
        try:
            for name in _DATABASES:
                if self.readonly and name in _ADDED_LATER:
                    try:  # a store no daemon of this version has opened yet
                        dbs[name] = self._env.open_db(name.encode(), create=False)
                    except lmdb.NotFoundError:
                        pass
                    continue
                dbs[name] = self._env.open_db(name.encode(), create=not self.readonly)
        except lmdb.Error as exc:
            self._env.close()
            raise _translate(exc) from None
        self._dbs = dbs
        self._map_range = None
        if self._chunk_file is None:
            try:
                self._chunk_file = ChunkFile(self.path / "store" / "data.mdb")
            except OSError as exc:  # placed reads are an optimisation
                log.warning("cannot open the data file for placed reads: %s", exc)
        try:
            self._check_places()
            if not self.readonly:
                self._open_upload_queue()
        except BaseException:
            self.close()
            raise

    def _check_places(self) -> None:
        """Trust the recorded chunk places only if the last write transaction was made
        by a version that keeps them (each stamps ``meta`` ``places_stamp`` with its own
        id): an older version frees and stores chunks, and changes manifests, without
        touching them. Read-write, untrusted places are dropped; read-only, they are
        just not used. (The map keeps the kernel's default advice: see storage.md.)"""
        meta = self._dbs["meta"]
        try:
            with self._env.begin(write=not self.readonly) as txn:
                stamp = txn.get(PLACES_TXN_META, db=meta)
                trusted = stamp is not None and from_u64(stamp) == txn.id() - (
                    0 if self.readonly else 1)
                if not self.readonly:
                    kept = [self._dbs[name] for name in _PLACES_OF.values()]
                    if not trusted and any(txn.stat(db)["entries"] for db in kept):
                        log.info("chunk places dropped: another version wrote the store")
                        for db in kept:
                            txn.drop(db, delete=False)
                    txn.put(PLACES_TXN_META, u64(txn.id()), db=meta)
                    trusted = True
        except lmdb.Error as exc:
            raise _translate(exc) from None
        self._places_trusted = trusted

    def _open_upload_queue(self) -> None:
        """Continue the queue's clock after its newest entry (a clock set back must not
        queue a name before what it builds on), and index the queue by age when
        ``upload_order`` does not match ``uploads``: a queue kept by a version without
        the index, or one whose index a downgrade left stale. Such a queue gets one
        stamp for every name: its kinds then go in name order (chunks, layouts, the
        log), the order older versions kept."""
        uploads, order = self._dbs["uploads"], self._dbs["upload_order"]
        try:
            with self._env.begin() as txn:  # most opens: nothing to do, nothing written
                with txn.cursor(db=order) as cur:
                    if cur.last():
                        self._last_queued_ns = max(self._last_queued_ns,
                                                   from_u64(cur.key()[:8]))
                if txn.stat(order)["entries"] == txn.stat(uploads)["entries"]:
                    return
            with self._env.begin(write=True) as txn:
                _restamp_queue(txn, uploads, order, self._queue_stamp())
                txn.put(PLACES_TXN_META, u64(txn.id()), db=self._dbs["meta"])
        except lmdb.Error as exc:
            raise _translate(exc) from None

    def _queue_stamp(self) -> int:
        """The time a write transaction queues its names at: now, or just after the
        previous stamp if the clock went back (write transactions are serial)."""
        with self._stamp_lock:
            self._last_queued_ns = max(time.time_ns(), self._last_queued_ns + 1)
            return self._last_queued_ns

    def _begin(self, *, write: bool) -> lmdb.Transaction:
        """Begin a transaction; after an LMDB panic, reopen the environment once.

        LMDB refuses every transaction, reads included, once a commit failed to write
        its meta page. The data on disk is the last good commit, so reopening is safe;
        transactions other threads still hold on the old environment fail with EIO.
        """
        env = self._env
        try:
            return env.begin(write=write, buffers=False)
        except lmdb.PanicError:
            with self._reopen_lock:
                if self._env is env:
                    log.error("LMDB environment panicked after a failed commit; reopening")
                    env.close()
                    self._open()
            return self._env.begin(write=write, buffers=False)

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / "store" / "data.mdb").exists()

    def clear_stale_readers(self) -> int:
        """Free reader slots left by killed processes; returns how many."""
        return self._env.reader_check()

    @contextmanager
    def read(self) -> Iterator[ReadTxn]:
        try:
            with self._begin(write=False) as txn:
                yield ReadTxn(txn, self._dbs,
                              self._chunk_file if self._places_trusted else None)
        except lmdb.Error as exc:
            raise _translate(exc) from None

    def set_writer_thread(self, ident: int | None) -> None:
        """Allow write transactions on thread ``ident`` only (None: on any thread)."""
        self._writer_thread = ident

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """A write transaction, committed (and synced) when the block ends normally."""
        owner = self._writer_thread
        if owner is not None and owner != threading.get_ident():
            raise RuntimeError("a write transaction outside the committer thread")
        with self._write_lock:
            try:
                txn = self._begin(write=True)
            except lmdb.Error as exc:
                raise _translate(exc) from None
            tx = WriteTxn(txn, self._dbs, self.replicating, self._queue_stamp,
                          self._chunk_file)
            try:
                tx.put_places(self._pending_places, self._pending_file_places)  # first
                tx.raw_put("meta", PLACES_TXN_META, u64(txn.id()))
                yield tx
            except lmdb.Error as exc:
                txn.abort()
                error = _translate(exc)
                if isinstance(error, NoSpace):
                    self._drop_pending()  # read hints: not worth a full disk
                raise error from None
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.Error as exc:
                error = self._commit_error(exc)
                if isinstance(error, NoSpace):
                    self._drop_pending()
                raise error from None
            self._pending_places = self._locate(tx.stored_chunks)
            self._pending_file_places = _file_places_of(tx.manifest_changes,
                                                        self._pending_places)

    def _drop_pending(self) -> None:
        self._pending_places, self._pending_file_places = {}, {}

    @property
    def places_pending(self) -> bool:
        """Whether the last commit stored chunks whose places no commit recorded yet."""
        return bool(self._pending_places or self._pending_file_places)

    def record_places(self) -> None:
        """Commit the pending places alone (the committer, when nothing else comes).
        On failure they are dropped (they are read hints) and the error raised."""
        if self.places_pending:
            try:
                with self.write():
                    pass
            except (NoSpace, StorageError):
                self._drop_pending()
                raise

    def _locate(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """The places of the chunks ``keys`` as just committed (see ``places.py``).

        Each value is read once from the map: its pages were just written, so they come
        from the page cache, and they are unmapped again right away (resident memory
        stays flat). Costs well under a millisecond per MiB; nothing on failure."""
        if not keys:
            return {}
        try:
            if self._map_range is None:
                self._map_range = _find_mapping(self.path / "store" / "data.mdb")
            if self._map_range is None:
                return {}
            start, length = self._map_range
            psize = self._env.stat()["psize"]
            places: dict[bytes, bytes] = {}
            low, high = length, 0
            with self._env.begin(buffers=True) as txn:
                for key in keys:
                    view = txn.get(key, db=self._dbs["chunks"])
                    if view is None:  # stored and freed again in one transaction
                        continue
                    place = place_of(view, start, length, psize)
                    if place is not None:
                        places[key] = encode_place(*place)
                        low, high = min(low, place[0]), max(high, place[0] + place[1])
            if places:
                self.release_mapped_pages()
            return places
        except Exception as exc:  # the commit is durable: never report it failed
            log.warning("chunk places not taken: %s", exc)
            return {}

    def _commit_error(self, exc: lmdb.Error) -> Exception:
        """LMDB reports a short write on a full disk as EIO; tell the two apart."""
        translated = _translate(exc)
        if isinstance(translated, StorageError) and self.free_bytes() < LOW_SPACE_BYTES:
            return NoSpace(f"no space left on the store's disk ({exc})")
        return translated

    def release_mapped_pages(self) -> None:
        """Drop this process's mappings of store pages; they stay in the page cache.

        Every chunk read faults 1 MiB of the LMDB map into the process, so resident
        memory would grow with everything ever read (reclaimable, but alarming and
        counted by RSS limits). MADV_DONTNEED on a shared file mapping only unmaps: the
        next access re-maps the same page from the page cache, so concurrent readers
        are unaffected.
        """
        if self._map_range is None:
            self._map_range = _find_mapping(self.path / "store" / "data.mdb")
        if self._map_range is not None:
            start, length = self._map_range
            _libc().madvise(start, length, _MADV_DONTNEED)

    def ensure_headroom(self) -> int:
        """Keep the data file allocated ahead of LMDB's last page; returns bytes added.

        LMDB appends pages to the data file. On ext4 every synced commit that grows a
        file also commits the journal (new blocks, new size), which cost 3x the write
        throughput on our machines (sys time in writeback). Allocating the file ahead in
        steps turns appends into overwrites of allocated blocks. It never takes the last
        :data:`LOW_SPACE_BYTES` of the disk, so a full disk still shows up as ENOSPC.
        """
        if self.readonly:
            return 0
        data_file = self.path / "store" / "data.mdb"
        used = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        size = data_file.stat().st_size
        if size - used >= PREALLOCATE_AHEAD:
            return 0
        step = min(PREALLOCATE_STEP, (self.free_bytes() - LOW_SPACE_BYTES) // 4)
        step -= step % (1 << 20)
        if step <= 0:
            return 0
        fd = os.open(data_file, os.O_WRONLY)
        try:
            os.posix_fallocate(fd, max(size, used), step)
        except OSError as exc:
            log.info("could not preallocate %d MiB: %s", step >> 20, exc.strerror)
            return 0
        finally:
            os.close(fd)
        return step

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        self._env.close()
        if self._chunk_file is not None:
            self._chunk_file.close()
            self._chunk_file = None
