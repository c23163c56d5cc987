"""A sealed file's layout: its size and the ordered keys of its chunks, bound by a digest.

Every chunk's bytes are checked against its key on each load, but the list of keys
(the ``manifests`` entries) and the size are separate records that a damaged or edited
store could change without touching any chunk: a missing entry would read as a hole, a
larger size as trailing zeros. So the seal makes the layout canonical and records a
digest of it:

* canonical: chunk ``i`` exists for every ``i < ceil(size / CHUNK_SIZE)``, every chunk but
  the last is exactly ``CHUNK_SIZE`` bytes and the last ends exactly at ``size``; no
  entry lies beyond it. Holes left by sparse writes or an extending ``ftruncate`` are
  stored as zero chunks (deduplicated like any other chunk);
* the digest (``Inode.layout``, and ``layout`` in the seal record of the audit log) is
  the hex SHA-256 of ``b"worm-fs layout v1\\n" || u64be(size) || key_0 || ... ||
  key_{n-1}``. Keys have a fixed length, so the concatenation is unambiguous.

Reads of a sealed file check its stored layout against the digest once per open handle
(:func:`check_layout`) and each chunk's length when it is loaded (:func:`chunk_length`);
a mismatch is :class:`~worm_fs.errors.Corruption`, handled like a bad chunk. Files
sealed before layouts were recorded have an empty digest: their layout is checked for
shape only (gap-free, ending at the size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from worm_fs.core.model import Caller
from worm_fs.errors import Corruption
from worm_fs.store import CHUNK_SIZE

_DOMAIN = b"worm-fs layout v1\n"


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_SIZE)


def chunk_length(size: int, index: int) -> int:
    """How long chunk ``index`` of a canonical file of ``size`` bytes is."""
    return max(0, min(CHUNK_SIZE, size - index * CHUNK_SIZE))


def layout_digest(size: int, keys: Iterable[bytes]) -> str:
    sha = hashlib.sha256(_DOMAIN)
    sha.update(size.to_bytes(8, "big"))
    for key in keys:
        sha.update(key)
    return sha.hexdigest()


_CHUNK_HASHES_DOMAIN = b"worm-fs chunk sha256 v1\n"


def chunk_hashes_digest(size: int, keys: Iterable[bytes], shas: Iterable[bytes]) -> str:
    """The digest a ``chunk_hashes`` record gives for a file's per-chunk SHA-256s: it
    binds them to the file's size and chunk keys, so a reader can check each chunk on
    its own (SHA-256 over a domain tag, the size, then each key and its SHA-256)."""
    sha = hashlib.sha256(_CHUNK_HASHES_DOMAIN)
    sha.update(size.to_bytes(8, "big"))
    for key, chunk_sha in zip(keys, shas, strict=True):
        sha.update(key)
        sha.update(chunk_sha)
    return sha.hexdigest()


def check_layout(size: int, manifest: Iterable[tuple[int, bytes]], expected: str) -> list[bytes]:
    """The chunk keys of a sealed file, in order, if its layout is canonical and matches
    ``expected`` (skipped when empty); else :class:`Corruption` saying what is wrong.

    ``manifest`` yields ``(index, key)`` in index order (as ``iter_manifest`` does).
    """
    count = chunk_count(size)
    keys: list[bytes] = []
    for index, key in manifest:
        if index != len(keys):
            raise Corruption(f"the chunk list has no chunk {len(keys)}"
                             if index > len(keys) else f"chunk {index} is listed twice")
        if index >= count:
            raise Corruption(f"the chunk list goes past the file's size ({size} bytes) "
                             f"at chunk {index}")
        keys.append(key)
    if len(keys) < count:
        raise Corruption(f"the chunk list has no chunk {len(keys)} (the size, {size} "
                         f"bytes, needs {count})")
    if expected and layout_digest(size, keys) != expected:
        raise Corruption("the size and chunk list do not match the layout digest recorded "
                         "at seal")
    return keys


def check_length(size: int, index: int, data: bytes) -> bytes:
    """``data`` if it is as long as chunk ``index`` of a sealed file must be."""
    want = chunk_length(size, index)
    if len(data) != want:
        raise Corruption(f"chunk {index} holds {len(data)} bytes where the file's layout "
                         f"needs {want}")
    return data


@dataclass
class SealPlan:
    """A seal decided outside the committer: the file's SHA-256 and the chunks that make
    its layout canonical (``(index, bytes, digest)``: holes as zeros, short or long
    chunks cut or padded to their length), hashed off the commit path."""

    ino: int
    sha256: str
    caller: Caller
    op: str = "seal"
    fixups: list[tuple[int, bytes, bytes]] = field(default_factory=list)
