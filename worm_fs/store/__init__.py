"""Storage: the LMDB environment, typed transactions and the chunk store.

The only package that imports :mod:`lmdb`.

* :mod:`.env` -- :class:`Store`, :class:`ReadTxn`, :class:`WriteTxn` over named databases
* :mod:`.chunks` -- content-addressed chunks (XXH3-128 keys, byte-confirmed dedup,
  reference counts, digest check on every load)
* :mod:`.records` -- the stored encoding of audit records (packed, or raw canonical JSON),
  which always decodes to the exact canonical bytes
"""

from worm_fs.store.chunks import (
    CHUNK_SIZE,
    check_chunk,
    digest,
    load_chunk,
    load_file_chunk,
    put_chunk,
    read_chunk,
    release_chunk,
)
from worm_fs.store.env import ReadTxn, Store, WriteTxn, from_u64, u64

__all__ = [
    "CHUNK_SIZE",
    "ReadTxn",
    "Store",
    "WriteTxn",
    "check_chunk",
    "digest",
    "from_u64",
    "load_chunk",
    "load_file_chunk",
    "put_chunk",
    "read_chunk",
    "release_chunk",
    "u64",
]
