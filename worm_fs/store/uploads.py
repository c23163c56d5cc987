"""Names in the replication queue (the ``uploads`` database): one per bucket object to
write, queued in the transaction that stores what it stands for.

Names sort by kind (``c/`` < ``f/`` < ``l/``), so the uploader can take a share of each.
"""

from __future__ import annotations

CHUNK = b"c/"  # c/<chunk key hex>: a stored chunk
FILE = b"f/"  # f/<ino>/<layout digest>: a sealed file's layout
LOG = b"l/"  # l/<tree size, 20 digits>: the log up to a signed checkpoint


def chunk_name(key: bytes) -> bytes:
    return CHUNK + key.hex().encode()


def file_name(ino: int, layout: str) -> bytes:
    return FILE + f"{ino}/{layout}".encode()


def log_name(size: int) -> bytes:
    return LOG + f"{size:020d}".encode()
