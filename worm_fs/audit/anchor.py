"""Signed checkpoints of the audit log, made and kept in the store.

The store's Ed25519 key lives in ``STATE_DIR/audit-signing.key`` (mode 0600), created
with the store. The key name and the checkpoint origin are both ``worm-fs/<store id>``.
"""

from __future__ import annotations

import time
from pathlib import Path

from worm_fs.audit.checkpoint import Checkpoint, SigningKey, sign_checkpoint
from worm_fs.audit.log import tree_head
from worm_fs.errors import NotAStore
from worm_fs.store import Store, WriteTxn, u64, uploads

KEY_FILE = "audit-signing.key"
CHECKPOINT_TIME_KEY = "checkpoint_time_ns"


def origin_for(store_id: str) -> str:
    return f"worm-fs/{store_id}"


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def ensure_key(state_dir: Path, store_id: str) -> SigningKey:
    """Load the store's signing key, creating it on first use."""
    path = key_path(state_dir)
    if path.exists():
        return SigningKey.load(path)
    key = SigningKey.generate(origin_for(store_id))
    key.save(path)
    return key


def load_key(state_dir: Path) -> SigningKey:
    path = key_path(state_dir)
    if not path.exists():
        raise NotAStore(f"{path} is missing: no signing key for this store")
    return SigningKey.load(path)


def make_checkpoint(store: Store, key: SigningKey, origin: str) -> str:
    """Sign the current tree head and keep it; returns the signed note (for a process
    other than the daemon: the daemon writes through its committer, see
    :func:`write_checkpoint`).

    If a checkpoint of the current size exists already, that one is returned.
    """
    with store.write() as tx:
        size, root = tree_head(tx)
        return write_checkpoint(tx, key, origin, size, root)


def write_checkpoint(tx: WriteTxn, key: SigningKey, origin: str, size: int, root: bytes) -> str:
    """Sign the tree head (``size``, ``root``) inside ``tx`` and keep it (or return the
    checkpoint of that size kept already)."""
    kept = tx.get_checkpoint(size)
    if kept is not None:
        return kept.decode()
    note_text = sign_checkpoint(Checkpoint(origin=origin, size=size, root=root), key)
    tx.put_checkpoint(size, note_text.encode())
    tx.put_meta(CHECKPOINT_TIME_KEY, u64(time.time_ns()))
    # The log up to here, for the bucket (a no-op unless the store replicates).
    tx.queue_upload(uploads.log_name(size), 0, time.time_ns())
    return note_text
