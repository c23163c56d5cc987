"""Chunk keys: a chunk's XXH3-128 digest followed by one disambiguation byte.

XXH3 is fast but not collision-resistant: :mod:`.chunks` trusts a dedup hit only
after comparing bytes, and two different chunks with the same digest get keys
``digest+00`` and ``digest+01``.
"""

from __future__ import annotations

import xxhash

DIGEST_LEN = 16
KEY_LEN = DIGEST_LEN + 1


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The XXH3-128 digest of ``data``."""
    return xxhash.xxh3_128_digest(data)


def matches_key(key: bytes, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` has the digest chunk key ``key`` names."""
    return len(key) == KEY_LEN and digest(data) == key[:DIGEST_LEN]
