"""Names in the replication queue (the ``uploads`` database): one per bucket object to
write, queued in the transaction that stores what it stands for.

Names sort by kind (``c/`` < ``f/`` < ``l/``), so the uploader can take a share of each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worm_fs.store.env import Store

CHUNK = b"c/"  # c/<chunk key hex>: a stored chunk
FILE = b"f/"  # f/<ino>/<layout digest>: a sealed file's layout
LOG = b"l/"  # l/<tree size, 20 digits>: the log up to a signed checkpoint

#: meta: the bucket URL the queue is kept for (unset: nothing is queued).
BUCKET_META = "replication_bucket"


def chunk_name(key: bytes) -> bytes:
    return CHUNK + key.hex().encode()


def file_name(ino: int, layout: str) -> bytes:
    return FILE + f"{ino}/{layout}".encode()


def log_name(size: int) -> bytes:
    return LOG + f"{size:020d}".encode()


def forget_bucket(store: Store) -> bool:
    """A store opened without its bucket: from now on nothing is queued, so the next
    mount with a bucket must queue everything again. Done in its own transaction before
    anything else is written (recovery's seals included), so a crash right after cannot
    leave writes unqueued under a bucket the store still names. True if it had one."""
    with store.read() as rt:  # most mounts: no bucket named, nothing to commit
        if rt.get_meta(BUCKET_META) is None:
            return False
    with store.write() as tx:
        tx.raw_delete("meta", BUCKET_META.encode())
    return True
