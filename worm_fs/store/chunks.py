"""Content-addressed chunks with reference counts.

A chunk's key is its XXH3-128 digest followed by one disambiguation byte. XXH3 is fast
but not collision-resistant, so a dedup hit is trusted only after comparing bytes: two
different chunks with the same digest get keys ``digest+00`` and ``digest+01``. Every
load re-hashes the bytes and compares them with the key; a mismatch raises
:class:`~worm_fs.errors.Corruption`, never returns bad data.

Store-wide counters kept in ``meta`` (same transaction as the change):
``chunks`` (number of distinct chunks) and ``stored_bytes`` (their total size).
"""

from __future__ import annotations

import logging

from worm_fs.errors import Corruption, StorageError
from worm_fs.store import uploads
from worm_fs.store.env import ReadTxn, WriteTxn
from worm_fs.store.keys import DIGEST_LEN, KEY_LEN, digest

#: Files are split into chunks of this many bytes (the last one may be shorter).
CHUNK_SIZE = 1 << 20

_MAX_COLLISIONS = 256

log = logging.getLogger(__name__)


def put_chunk(
    tx: WriteTxn, data: bytes | bytearray | memoryview, chunk_digest: bytes | None = None
) -> bytes:
    """Store ``data`` (or find an identical stored chunk) and take one reference.

    ``chunk_digest`` may be passed when the caller already hashed ``data`` (off the
    event loop). Returns the chunk key to record in a manifest.
    """
    d = chunk_digest if chunk_digest is not None else digest(data)
    for n in range(_MAX_COLLISIONS):
        key = d + bytes((n,))
        existing = tx.get_chunk(key)
        if existing is None:
            tx.put_chunk(key, data)
            tx.set_ref(key, 1)
            tx.add_counter("chunks", 1)
            tx.add_counter("stored_bytes", len(data))
            tx.queue_upload(uploads.chunk_name(key), len(data))
            return key
        if _same_bytes(existing, data):
            tx.set_ref(key, tx.get_ref(key) + 1)
            return key
    raise StorageError("too many chunks share one digest")


def _same_bytes(stored: bytes, data: bytes | bytearray | memoryview) -> bool:
    # bytes == memoryview compares element by element (milliseconds per MiB); compare
    # the underlying object when the view covers all of it, else a copy.
    if isinstance(data, memoryview):
        whole = data.obj if isinstance(data.obj, bytes) and len(data.obj) == len(data) else None
        return stored == (whole if whole is not None else data.tobytes())
    return stored == data


def release_chunk(tx: WriteTxn, key: bytes) -> int:
    """Drop one reference to ``key``; frees the chunk at zero. Returns bytes freed."""
    refs = tx.get_ref(key)
    if refs > 1:
        tx.set_ref(key, refs - 1)
        return 0
    size = tx.chunk_size(key)
    tx.set_ref(key, 0)
    if size is None:
        return 0
    tx.delete_chunk(key)
    tx.add_counter("chunks", -1)
    tx.add_counter("stored_bytes", -size)
    tx.done_upload(uploads.chunk_name(key))  # nothing to upload now; stored again, queued again
    return size


def check_chunk(key: bytes, data: bytes | None) -> bytes:
    """Return ``data`` if it matches ``key``'s digest, else raise Corruption."""
    if data is None:
        raise Corruption(f"chunk {key.hex()} is missing")
    if len(key) != KEY_LEN or digest(data) != key[:DIGEST_LEN]:
        raise Corruption(f"chunk {key.hex()} does not match its digest")
    return data


def read_chunk(tx: ReadTxn, key: bytes) -> bytes | None:
    """The bytes of chunk ``key``, verified against its digest; None if not stored
    (read at its place when it has one: see :meth:`ReadTxn.get_chunk`)."""
    data, verified = tx.fetch_chunk(key)
    return data if data is None or verified else check_chunk(key, data)


def load_chunk(tx: ReadTxn, key: bytes) -> bytes:
    """The bytes of chunk ``key``, verified against its digest."""
    data = read_chunk(tx, key)
    return check_chunk(key, None) if data is None else data


def load_file_chunk(tx: ReadTxn, ino: int, index: int) -> bytes | None:
    """Chunk ``index`` of file ``ino`` (verified), or None for a hole."""
    key = tx.get_manifest(ino, index)
    return None if key is None else load_chunk(tx, key)
