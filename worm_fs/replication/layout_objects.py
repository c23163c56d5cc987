"""A sealed file's layout object in the bucket: written by the uploader, read by
``verify --bucket``, ``restore`` and replicas. The one place that knows its format.

``files/<ino>-<layout digest>.json`` is canonical JSON: ``ino``, ``size``, ``sha256``,
``layout`` (the layout digest), ``chunks`` (the chunk keys in order, hex),
``chunk_sha256`` (each chunk's SHA-256, hex, in the same order), ``mode``, ``uid``,
``gid``, ``sealed_ns``, ``seal_seq``. Readers trust it only as far as the log vouches:
its size and keys must give the seal record's layout digest, and its ``chunk_sha256``
list the ``chunks_sha256`` of the file's ``chunk_hashes`` record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from worm_fs.core.layout import chunk_hashes_digest, layout_digest
from worm_fs.core.model import Inode
from worm_fs.store import ReadTxn

#: Bytes of a chunk's SHA-256 (the ``chunk_sha256`` entries, a replica's cache).
SHA_LEN = 32
#: The audit records that seal a file; each names the layout object it pins.
SEALS = ("seal", "recover_seal")


def file_object(ino: int, layout: str) -> str:
    return f"files/{ino}-{layout}.json"


@dataclass(frozen=True)
class ChunkHashes:
    """What a ``chunk_hashes`` record says of one sealed file."""

    ino: int
    layout: str
    digest: str  # chunk_hashes_digest(size, keys, per-chunk SHA-256s)


def file_layout_object(rt: ReadTxn, inode: Inode) -> tuple[bytes, ChunkHashes]:
    """The layout object of a sealed file, with the SHA-256 of each of its chunks (read
    and hashed here: in the upload process, off the FUSE path), and what the
    ``chunk_hashes`` record that vouches for that list must say."""
    keys = [key for _, key in rt.iter_manifest(inode.ino)]
    shas = [hashlib.sha256(rt.get_chunk(key) or b"").digest() for key in keys]
    doc = {"ino": inode.ino, "size": inode.size, "sha256": inode.sha256,
           "layout": inode.layout, "chunks": [key.hex() for key in keys],
           "chunk_sha256": [sha.hex() for sha in shas], "mode": inode.mode,
           "uid": inode.uid, "gid": inode.gid, "sealed_ns": inode.sealed_ns,
           "seal_seq": dict(inode.extra.get("provenance") or {}).get("seal_seq")}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return body, ChunkHashes(inode.ino, inode.layout,
                             chunk_hashes_digest(inode.size, keys, shas))


@dataclass
class Layout:
    """A layout object whose size and chunk keys gave the seal record's layout digest."""

    size: int
    keys: list[bytes]
    #: The ``chunk_sha256`` list as the object gives it (None if absent or malformed);
    #: not to be trusted before :meth:`vouched_by` a ``chunk_hashes`` record.
    shas: list[bytes] | None = None

    def vouched_by(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` (a ``chunk_hashes`` record) vouches for :attr:`shas`."""
        return self.shas is not None and chunk_hashes_digest(
            self.size, self.keys, self.shas) == record.get("chunks_sha256")


def read_layout_object(body: bytes, layout: str, size: int | None = None) -> Layout:
    """A layout object checked against the layout digest ``layout`` (and the seal
    record's ``size``, if given); ValueError says what is wrong."""
    try:
        doc = json.loads(body)
        keys = [bytes.fromhex(k) for k in doc["chunks"]]
        stated = int(doc["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed: {exc}") from None
    if (size is not None and stated != size) or layout_digest(stated, keys) != layout:
        raise ValueError("its size and chunk list do not match the layout digest of its "
                         "seal record")
    try:
        shas = [bytes.fromhex(h) for h in doc.get("chunk_sha256") or []]
    except (ValueError, TypeError):
        shas = []
    good = len(shas) == len(keys) and all(len(h) == SHA_LEN for h in shas)
    return Layout(stated, keys, shas if good else None)
