"""Signed checkpoints of the audit log, made and kept in the store.

The store's Ed25519 key lives in ``STATE_DIR/audit-signing.key`` (mode 0600), created
with the store. The key name and the checkpoint origin are the same string: by default
``worm-fs/<store id>``, or the ``--log-origin`` given when the store was first mounted
(kept in the store's meta as ``log_origin``; C2SP recommends a schema-less URL such as
``models.example.com/worm``). An origin is fixed for the life of the store: every
checkpoint, cosignature and replica pins it.
"""

from __future__ import annotations

import time
from pathlib import Path

from worm_fs.audit.checkpoint import Checkpoint, SigningKey, sign_checkpoint
from worm_fs.audit.log import tree_head
from worm_fs.errors import NotAStore, UsageError
from worm_fs.store import ReadTxn, Store, WriteTxn, from_u64, u64, uploads

KEY_FILE = "audit-signing.key"
CHECKPOINT_TIME_KEY = "checkpoint_time_ns"
#: The tree size of the transient checkpoint kept now, if any (see write_checkpoint).
TRANSIENT_KEY = "transient_checkpoint"
ORIGIN_KEY = "log_origin"


def origin_for(store_id: str) -> str:
    """The default origin of a store's log."""
    return f"worm-fs/{store_id}"


def stored_origin(rt: ReadTxn) -> str:
    """The origin of this store's log: the one fixed at its creation, else the default."""
    kept = rt.get_meta(ORIGIN_KEY)
    if kept is not None:
        return kept.decode()
    return origin_for((rt.get_meta("store_id") or b"").decode())


def check_origin(origin: str) -> str:
    """``origin`` if it can be a log origin and key name (non-empty, no spaces, no '+',
    no control characters, C2SP tlog-checkpoint/signed-note), else :class:`UsageError`."""
    if (not origin or len(origin) > 255 or "+" in origin
            or any(c.isspace() or not c.isprintable() for c in origin)):
        raise UsageError(f"--log-origin {origin!r}: an origin is one line of printable "
                         "characters without spaces or '+', e.g. models.example.com/worm")
    return origin


def fix_origin(store: Store, state_dir: Path, requested: str | None) -> str:
    """The origin this mount signs with, fixing ``requested`` on a store that has none
    yet (no signing key made). Refuses (exit 2) another origin than the store's.

    Runs at mount, before the committer starts: it writes through ``store`` directly.
    """
    with store.read() as rt:
        current = stored_origin(rt)
        kept = rt.get_meta(ORIGIN_KEY) is not None
    if requested is None or requested == current:
        return current
    check_origin(requested)
    if kept or key_path(state_dir).exists():
        raise UsageError(f"--log-origin {requested}: this store's log has the origin "
                         f"{current}, fixed when it was created")
    with store.write() as tx:
        tx.put_meta(ORIGIN_KEY, requested.encode())
    return requested


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def ensure_key(state_dir: Path, origin: str) -> SigningKey:
    """Load the store's signing key, creating it on first use, named ``origin``."""
    path = key_path(state_dir)
    if path.exists():
        return SigningKey.load(path)
    key = SigningKey.generate(origin)
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


def write_checkpoint(tx: WriteTxn, key: SigningKey, origin: str, size: int, root: bytes,
                     *, transient: bool = False) -> str:
    """Sign the tree head (``size``, ``root``) inside ``tx`` and keep it (or return the
    checkpoint of that size kept already).

    A ``transient`` checkpoint (one signed only so that the bucket's log follows within
    a second) is kept only until the next checkpoint is signed, which replaces it: the
    store then keeps one per ``--checkpoint-seconds``, not one per second. Asked for
    again without ``transient`` (``log checkpoint``, a manifest), it is kept for good.
    """
    kept = tx.get_checkpoint(size)
    if kept is not None:
        if not transient:
            keep_checkpoint(tx, size)
        # Queued again: one signed by the CLI (``log checkpoint``, ``manifest create``)
        # in a process of its own was not queued for the bucket there.
        tx.queue_upload(uploads.log_name(size), 0)
        return kept.decode()
    note_text = sign_checkpoint(Checkpoint(origin=origin, size=size, root=root), key)
    superseded = transient_checkpoint(tx)
    if superseded is not None:
        tx.delete_checkpoint(superseded)
        tx.delete_meta(TRANSIENT_KEY)
    tx.put_checkpoint(size, note_text.encode())
    if transient:
        tx.put_meta(TRANSIENT_KEY, u64(size))
    tx.put_meta(CHECKPOINT_TIME_KEY, u64(time.time_ns()))
    # The log up to here, for the bucket (a no-op unless the store replicates).
    tx.queue_upload(uploads.log_name(size), 0)
    return note_text


def transient_checkpoint(rt: ReadTxn) -> int | None:
    """The tree size of the transient checkpoint kept now (the next one replaces it)."""
    raw = rt.get_meta(TRANSIENT_KEY)
    return None if raw is None else from_u64(raw)


def keep_checkpoint(tx: WriteTxn, size: int) -> None:
    """Keep the checkpoint of ``size`` for good, if it was transient (a witness
    cosigned it, or someone asked for it)."""
    if transient_checkpoint(tx) == size:
        tx.delete_meta(TRANSIENT_KEY)
