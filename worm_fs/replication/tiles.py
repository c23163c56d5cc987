"""The audit log as C2SP tlog-tiles: hash tiles and entry bundles of tree size N.

A tile at level L holds up to 256 hashes, each the root of a complete subtree of
``256**L`` leaves (level 0: the leaf hashes, RFC 9162 ``SHA-256(0x00 || record)``);
tile ``N`` of level ``L`` covers subtrees ``256*N .. 256*N+255``. A tile that is not full
at tree size N is *partial*: its name carries its width, ``.p/W``. Entry bundles hold
the records themselves (the canonical bytes that were hashed), each as a big-endian
16-bit length and the bytes. Paths (``tile/L/N[.p/W]``, ``tile/entries/N[.p/W]``) encode
N in groups of three digits, all but the last prefixed with ``x``: ``x001/x234/067``.
Every path names fixed content (a partial tile of width W never changes), so objects
are written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

WIDTH = 256
_NODE = b"\x01"


def index_path(n: int) -> str:
    """C2SP tlog-tiles encoding of a tile index: 1234067 -> ``x001/x234/067``."""
    groups = []
    while True:
        groups.append(n % 1000)
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([f"x{g:03d}" for g in groups[:-1]] + [f"{groups[-1]:03d}"])


def tile_path(level: int | str, index: int, width: int = WIDTH) -> str:
    suffix = "" if width == WIDTH else f".p/{width}"
    return f"tile/{level}/{index_path(index)}{suffix}"


def _subtree_root(hashes: list[bytes]) -> bytes:
    """Root of a complete subtree over 256 (a power of two) consecutive node hashes."""
    level = hashes
    while len(level) > 1:
        level = [hashlib.sha256(_NODE + level[i] + level[i + 1]).digest()
                 for i in range(0, len(level), 2)]
    return level[0]


class TileTree:
    """The hashes of every complete 256**L subtree of the log, level by level, kept in
    memory and extended leaf by leaf (32 bytes per record, plus 1/255 of that above)."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf in leaf_hashes:
            self.levels[0].append(leaf)
            level = 0
            while len(self.levels[level]) % WIDTH == 0:
                group = self.levels[level][-WIDTH:]
                if level + 1 == len(self.levels):
                    self.levels.append([])
                self.levels[level + 1].append(_subtree_root(group))
                level += 1

    def tiles(self, size: int, done: int = 0) -> list[tuple[str, bytes]]:
        """(path, content) of every hash tile of tree ``size`` not already covered by
        tree ``done`` (a tile of ``done`` that was partial is written again, wider)."""
        out: list[tuple[str, bytes]] = []
        level, span = 0, 1
        while span <= size:
            count = size // span  # complete subtrees of this level
            first = (done // span) // WIDTH
            for index in range(first, -(-count // WIDTH)):
                lo, hi = index * WIDTH, min((index + 1) * WIDTH, count)
                if hi <= (done // span) and hi - lo == WIDTH:
                    continue  # full at ``done`` already
                if hi == lo:
                    continue
                out.append((tile_path(level, index, hi - lo),
                            b"".join(self.levels[level][lo:hi])))
            level, span = level + 1, span * WIDTH
        return out


def entry_bundles(records: list[bytes], start: int) -> list[tuple[str, bytes]]:
    """(path, content) of the entry bundles holding ``records`` (record ``start`` is
    the first; ``start`` is a multiple of 256, the last bundle may be partial)."""
    assert start % WIDTH == 0
    out = []
    if any(len(r) > 0xFFFF for r in records):
        raise ValueError("a record longer than 65535 bytes does not fit an entry bundle")
    for lo in range(0, len(records), WIDTH):
        group = records[lo : lo + WIDTH]
        body = b"".join(len(r).to_bytes(2, "big") + r for r in group)
        out.append((tile_path("entries", (start + lo) // WIDTH, len(group)), body))
    return out


def parse_bundle(body: bytes) -> list[bytes]:
    """The records of an entry bundle (ValueError if it is malformed)."""
    records, pos = [], 0
    while pos < len(body):
        if pos + 2 > len(body):
            raise ValueError("truncated entry length")
        n = int.from_bytes(body[pos : pos + 2], "big")
        if pos + 2 + n > len(body):
            raise ValueError("truncated entry")
        records.append(body[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return records
