"""Merkle tree primitives of RFC 9162 (Certificate Transparency 2.0), with SHA-256.

The tree is the one RFC 6962 defined and RFC 9162 kept: for ``n`` leaves ``D[0:n]``

* ``MTH({}) = SHA-256("")``,
* ``MTH({d}) = SHA-256(0x00 || d)`` (:func:`leaf_hash`),
* ``MTH(D[0:n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` for ``n > 1``, where ``k``
  is the largest power of two smaller than ``n`` (:func:`node_hash`).

Everything here works on *leaf hashes* (32-byte outputs of :func:`leaf_hash`), never on
raw entries, so a caller can keep only hashes on disk.

Functions that read a whole tree take a :class:`collections.abc.Sequence` of leaf hashes
and only ever call ``len(seq)`` and ``seq[i]`` with an integer ``i`` (no slicing, no
iteration), so a lazy sequence backed by a ``get_leaf(i)`` lookup works as well as a list.
They cost O(n) hashes per call; that is the current contract, not a promise of speed.

Verification functions never raise on hostile input: any malformed argument (a hash that
is not 32 bytes, an index outside the tree, a proof of the wrong length) yields ``False``.
Generation functions and :class:`Frontier` raise :class:`ValueError` on malformed input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Frontier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: SHA-256 of the empty string."""

MAX_TREE_SIZE = 2**64 - 1
"""Largest tree size that :class:`Frontier` can hold (its size is stored in 8 bytes)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_BYTES_LIKE = (bytes, bytearray, memoryview)


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of a leaf holding ``data``: SHA-256(0x00 || data)."""
    h = hashlib.sha256(_LEAF_PREFIX)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node: SHA-256(0x01 || left || right).

    ``left`` and ``right`` are the hashes of its two children; their lengths are not
    checked here (this is the inner loop of every other function).
    """
    h = hashlib.sha256(_NODE_PREFIX)
    h.update(left)
    h.update(right)
    return h.digest()


def _is_hash(value: object) -> bool:
    return isinstance(value, _BYTES_LIKE) and len(value) == HASH_SIZE


def _require_hash(value: object, what: str) -> bytes:
    if not isinstance(value, _BYTES_LIKE):
        raise ValueError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
    return bytes(value)


def _leaf_at(leaf_hashes: Sequence[bytes], index: int) -> bytes:
    return _require_hash(leaf_hashes[index], f"leaf hash at index {index}")


def _split_point(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _push(stack: list[bytes], count: int, h: bytes) -> None:
    """Append leaf hash ``h`` to the compact range ``stack`` that covers ``count`` leaves.

    ``stack`` holds the roots of the perfect subtrees that make up the binary expansion
    of ``count``, largest (leftmost) first. Every trailing 1 bit of ``count`` is a subtree
    of the same height as the one being carried, so the two merge.
    """
    while count & 1:
        h = node_hash(stack.pop(), h)
        count >>= 1
    stack.append(h)


def _fold(stack: Sequence[bytes]) -> bytes:
    """Root of the tree whose compact range is ``stack`` (right-to-left fold)."""
    if not stack:
        return EMPTY_ROOT
    root = stack[-1]
    for h in reversed(stack[:-1]):
        root = node_hash(h, root)
    return root


def _range_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]), reading each leaf once and keeping O(log n) hashes."""
    stack: list[bytes] = []
    for count, i in enumerate(range(start, end)):
        _push(stack, count, _leaf_at(leaf_hashes, i))
    return _fold(stack)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH of the tree whose leaves hash to ``leaf_hashes`` (in order).

    The empty tree's root is :data:`EMPTY_ROOT`. Raises :class:`ValueError` if any
    element is not a 32-byte hash.
    """
    return _range_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 9162 inclusion proof (``PATH``) of leaf ``index`` in the whole tree.

    The proof lists sibling subtree hashes from the leaf up to the root, as section
    2.1.3.1 orders them. Raises :class:`ValueError` if ``index`` is not in
    ``[0, len(leaf_hashes))`` or a leaf hash is malformed.
    """
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    top_down: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split_point(hi - lo)
        if index < mid:
            top_down.append(_range_root(leaf_hashes, mid, hi))
            hi = mid
        else:
            top_down.append(_range_root(leaf_hashes, lo, mid))
            lo = mid
    top_down.reverse()
    return top_down


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Return whether ``proof`` shows leaf ``index`` hashing to ``leaf_hash`` is in the tree.

    Follows RFC 9162 section 2.1.3.2: the proof must rebuild exactly ``root`` for a
    tree of ``tree_size`` leaves and use every element. Returns ``False`` (never raises)
    for a wrong proof or any malformed argument.
    """
    if not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    if index < 0 or index >= tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A right edge node with no right sibling: climb to the level where it is
            # the right child of something (or the root of the subtree).
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the RFC 9162 consistency proof (``PROOF``) from ``old_size`` to the whole tree.

    Section 2.1.4.1: the proof is empty when ``old_size`` is 0 or the full size.
    Raises :class:`ValueError` if ``old_size`` is not in ``[0, len(leaf_hashes)]`` or a
    leaf hash is malformed.
    """
    size = len(leaf_hashes)
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} is outside [0, {size}]")
    if old_size in (0, size):
        return []
    # Unrolled SUBPROOF(m, D[lo:hi], b): collect siblings top-down, reverse at the end.
    top_down: list[bytes] = []
    m, lo, hi = old_size, 0, size
    old_is_whole_subtree = True  # the "b" flag of the RFC
    while m != hi - lo:
        mid = lo + _split_point(hi - lo)
        if m <= mid - lo:
            top_down.append(_range_root(leaf_hashes, mid, hi))
            hi = mid
        else:
            top_down.append(_range_root(leaf_hashes, lo, mid))
            m -= mid - lo
            lo = mid
            old_is_whole_subtree = False
    if not old_is_whole_subtree:
        top_down.append(_range_root(leaf_hashes, lo, hi))
    top_down.reverse()
    return top_down


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Return whether ``proof`` shows the tree (new_size, new_root) extends (old_size, old_root).

    Follows RFC 9162 section 2.1.4.2, with these edge cases:

    * ``old_size == new_size``: true iff ``proof`` is empty and the roots are equal;
    * ``old_size == 0``: true iff ``proof`` is empty and ``old_root`` is
      :data:`EMPTY_ROOT` (every tree extends the empty tree);
    * ``old_size > new_size`` or a negative size: false.

    Returns ``False`` (never raises) for a wrong proof or any malformed argument.
    """
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    if old_size < 0 or new_size < 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if len(proof) == 0:
        return False

    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one; its root is implied.
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class Frontier:
    """Incremental Merkle tree appender holding only O(log n) hashes.

    The state is the *compact range* of ``[0, size)``: the roots of the perfect
    subtrees given by the binary expansion of ``size``, largest (leftmost) first; there
    is one hash per 1 bit of ``size``. Contract: after appending leaf hashes
    ``h_0 .. h_{n-1}`` to an empty frontier, ``root() == root_hash([h_0, .., h_{n-1}])``.

    :meth:`to_bytes` gives a compact encoding for a key-value store: the size as
    8 bytes big-endian, then the 32-byte subtree roots in order (so its length is
    ``8 + 32 * popcount(size)``). :meth:`from_bytes` is its exact inverse.
    """

    __slots__ = ("_hashes", "_size")
    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __init__(self) -> None:
        """Create the frontier of the empty tree."""
        self._size = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf by its hash (the output of :func:`leaf_hash`).

        Raises :class:`ValueError` if ``leaf_hash`` is not 32 bytes or the tree
        already holds :data:`MAX_TREE_SIZE` leaves; the frontier is unchanged then.
        """
        h = _require_hash(leaf_hash, "leaf hash")
        if self._size >= MAX_TREE_SIZE:
            raise ValueError("tree is full")
        _push(self._hashes, self._size, h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order (see :meth:`append`)."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Root hash of the tree of all appended leaves (:data:`EMPTY_ROOT` if none)."""
        return _fold(self._hashes)

    def copy(self) -> Frontier:
        """Return an independent copy."""
        other = Frontier()
        other._size = self._size
        other._hashes = list(self._hashes)
        return other

    def to_bytes(self) -> bytes:
        """Encode as 8-byte big-endian size followed by the subtree roots."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Decode the output of :meth:`to_bytes`.

        Raises :class:`ValueError` if ``data`` is shorter than 8 bytes or its length
        is not exactly ``8 + 32 * popcount(size)``; :class:`TypeError` if it is not
        bytes-like.
        """
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"frontier must be decoded from bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < 8:
            raise ValueError(f"frontier encoding is {len(data)} bytes, shorter than 8")
        size = int.from_bytes(data[:8], "big")
        count = size.bit_count()
        want = 8 + HASH_SIZE * count
        if len(data) != want:
            raise ValueError(
                f"frontier of size {size} needs {count} hashes ({want} bytes), "
                f"got {len(data)} bytes"
            )
        frontier = cls()
        frontier._size = size
        frontier._hashes = [data[8 + HASH_SIZE * i : 8 + HASH_SIZE * (i + 1)] for i in range(count)]
        return frontier

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"Frontier(size={self._size}, root={self.root().hex()})"
