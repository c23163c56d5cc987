"""Appending audit records: the pending buffer and per-transaction batches.

Two kinds of record:

* Records of **state changes** are added to the write transaction that makes the change
  (:meth:`AuditLog.batch`), so one is never durable without the other.
* Records that **change no state** (opens, reads, refusals) are :meth:`noted <note>`
  into a buffer and written by the next write transaction, which the daemon forces at
  least every 100 ms (group commit).

A batch drains the buffer first, so sequence numbers follow the order in which
records were noted or added. Sequence numbers are allocated inside the transaction:
an aborted transaction allocates nothing, and its drained records stay buffered.

Record fields: ``seq``, ``time_ns`` (wall clock), ``mono_ns``, ``boot_id``, ``op``,
``result`` (``ok`` or an errno name), then per operation ``path``, ``ino``, ``uid``,
``gid``, ``pid``, ``comm`` and details (flags, offsets, sizes, digests, ...).
"""

from __future__ import annotations

import errno as errno_mod
import json
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

from worm_fs.audit.merkle import Frontier, leaf_hash
from worm_fs.store import ReadTxn, WriteTxn

FRONTIER_KEY = "audit_frontier"
REFUSALS_PREFIX = "refusals:"
NEXT_SEQ_KEY = "audit_next_seq"
#: Per-uid usage of the log: ``audit_uid:<uid>`` -> records, stored bytes, and opens
#: refused by the open rate limit (three u64). Records without a caller count under
#: ``none``; uids beyond the first :data:`MAX_TRACKED_UIDS` count together under
#: ``other``.
UID_USAGE_PREFIX = "audit_uid:"
UID_USAGE_COUNT_KEY = "audit_uids_tracked"
MAX_TRACKED_UIDS = 1000
#: Stored bytes of every record counted in the per-uid usage (the sum over uids).
STORED_BYTES_KEY = "audit_stored_bytes"
_USAGE = struct.Struct(">QQQ")

Record = dict[str, Any]


def canonical(record: Mapping[str, Any]) -> bytes:
    """The exact bytes a record is stored and hashed as."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def result_name(err: int | None) -> str:
    if not err:
        return "ok"
    return errno_mod.errorcode.get(err, f"E{err}")


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


class AuditLog:
    """Builds records and hands them to write transactions. Thread-safe."""

    def __init__(self, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or read_boot_id()
        self._pending: list[Record] = []
        self._lock = threading.Lock()

    def stamp(self, op: str, err: int | None = None, **fields: Any) -> Record:
        """A new record for ``op`` (without ``seq``), timed now."""
        record: Record = {
            "time_ns": time.time_ns(),
            "mono_ns": time.monotonic_ns(),
            "boot_id": self.boot_id,
            "op": op,
            "result": result_name(err),
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        return record

    def note(self, record: Record) -> None:
        """Buffer a record that changes no state; written by the next batch."""
        with self._lock:
            self._pending.append(record)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def batch(self, tx: WriteTxn) -> AuditBatch:
        """Start appending inside ``tx``; drains the pending buffer into it."""
        batch = AuditBatch(self, tx)
        with self._lock:
            drained = list(self._pending)
        for record in drained:
            batch.add(record)
        batch.drained = len(drained)
        return batch

    def committed(self, batch: AuditBatch) -> None:
        """Forget the records ``batch`` drained, once its transaction committed."""
        with self._lock:
            del self._pending[: batch.drained]


class AuditBatch:
    """Records being appended inside one write transaction."""

    def __init__(self, log: AuditLog, tx: WriteTxn) -> None:
        self._tx = tx
        raw = tx.get_meta(FRONTIER_KEY)
        self._frontier = Frontier.from_bytes(raw) if raw else Frontier()
        self._next_seq = tx.get_counter(NEXT_SEQ_KEY)
        if self._frontier.size != self._next_seq:
            raise RuntimeError("audit frontier and sequence counter disagree")
        self.drained = 0
        self.added = 0
        #: uid (or "none") -> [records, stored bytes, throttled opens] of this batch.
        self._usage: dict[str, list[int]] = {}

    def add(self, record: Record) -> int:
        """Append ``record`` (stamping its ``seq``); returns the seq."""
        seq = self._next_seq
        stored = dict(record, seq=seq)
        data = canonical(stored)
        size = self._tx.put_record(seq, data, stored)
        self._frontier.append(leaf_hash(data))
        self._next_seq += 1
        if record.get("result", "ok") != "ok":  # refusals by operation, for alerting
            self._tx.add_counter(REFUSALS_PREFIX + str(record.get("op")), 1)
        uid = record.get("uid")
        usage = self._usage.setdefault("none" if uid is None else str(uid), [0, 0, 0])
        usage[0] += 1
        usage[1] += size
        if record.get("op") == "open_throttled":
            usage[2] += int(record.get("count", 0))
        self.added += 1
        return seq

    def finish(self) -> None:
        """Persist the tree state and the usage counters; call before the transaction
        commits."""
        if self.added:
            self._tx.put_meta(FRONTIER_KEY, self._frontier.to_bytes())
            self._tx.put_meta(NEXT_SEQ_KEY, self._next_seq.to_bytes(8, "big"))
        total = 0
        for uid, counts in self._usage.items():
            add_uid_usage(self._tx, uid, counts)
            total += counts[1]
        if total:
            self._tx.add_counter(STORED_BYTES_KEY, total)

    @property
    def size(self) -> int:
        return self._next_seq

    def root(self) -> bytes:
        return self._frontier.root()


def add_uid_usage(tx: WriteTxn, uid: str, counts: list[int]) -> None:
    """Add [records, bytes, throttled] to one uid's usage (bounded: see
    :data:`MAX_TRACKED_UIDS`)."""
    key = UID_USAGE_PREFIX + uid
    raw = tx.get_meta(key)
    if raw is None:
        if tx.get_counter(UID_USAGE_COUNT_KEY) >= MAX_TRACKED_UIDS and uid != "none":
            key = UID_USAGE_PREFIX + "other"
            raw = tx.get_meta(key)
        else:
            tx.add_counter(UID_USAGE_COUNT_KEY, 1)
    old = (0, 0, 0) if raw is None else _USAGE.unpack(raw)
    tx.put_meta(key, _USAGE.pack(*(a + b for a, b in zip(old, counts, strict=True))))


def uid_usage(tx: ReadTxn) -> dict[str, dict[str, int]]:
    """Per uid: ``records`` and ``bytes`` (stored) appended to the log since per-uid
    counting began, and ``throttled`` opens refused by the open rate limit."""
    usage: dict[str, dict[str, int]] = {}
    for key, raw in tx.iter_meta(UID_USAGE_PREFIX):
        records, nbytes, throttled = _USAGE.unpack(raw)
        usage[key[len(UID_USAGE_PREFIX):]] = {"records": records, "bytes": nbytes,
                                              "throttled": throttled}
    return dict(sorted(usage.items(), key=lambda kv: _uid_order(kv[0])))


def usage_stats(tx: ReadTxn) -> dict[str, Any]:
    """The log's usage for ``worm-fs stats``: stored bytes, bytes per record and the
    per-uid table, all counted since per-uid counting began (older stores: since the
    first daemon start of a version that counts)."""
    by_uid = uid_usage(tx)
    counted = sum(u["records"] for u in by_uid.values())
    stored = tx.get_counter(STORED_BYTES_KEY)
    return {
        "audit_stored_bytes": stored,
        "audit_bytes_per_record": round(stored / counted, 1) if counted else 0.0,
        "audit_by_uid": by_uid,
    }


def _uid_order(uid: str) -> tuple[int, int]:
    return (0, int(uid)) if uid.isdigit() else (1, 0)


def tree_head(tx: ReadTxn) -> tuple[int, bytes]:
    """(size, root hash) of the log as of ``tx``."""
    raw = tx.get_meta(FRONTIER_KEY)
    frontier = Frontier.from_bytes(raw) if raw else Frontier()
    return frontier.size, frontier.root()
