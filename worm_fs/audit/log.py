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
import threading
import time
from collections.abc import Mapping
from typing import Any

from worm_fs.audit.merkle import Frontier, leaf_hash
from worm_fs.store import ReadTxn, WriteTxn

FRONTIER_KEY = "audit_frontier"
REFUSALS_PREFIX = "refusals:"
NEXT_SEQ_KEY = "audit_next_seq"

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

    def add(self, record: Record) -> int:
        """Append ``record`` (stamping its ``seq``); returns the seq."""
        seq = self._next_seq
        stored = dict(record, seq=seq)
        data = canonical(stored)
        self._tx.put_record(seq, data)
        self._frontier.append(leaf_hash(data))
        self._next_seq += 1
        if record.get("result", "ok") != "ok":  # refusals by operation, for alerting
            self._tx.add_counter(REFUSALS_PREFIX + str(record.get("op")), 1)
        self.added += 1
        return seq

    def finish(self) -> None:
        """Persist the tree state; call before the transaction commits."""
        if self.added:
            self._tx.put_meta(FRONTIER_KEY, self._frontier.to_bytes())
            self._tx.put_meta(NEXT_SEQ_KEY, self._next_seq.to_bytes(8, "big"))

    @property
    def size(self) -> int:
        return self._next_seq

    def root(self) -> bytes:
        return self._frontier.root()


def tree_head(tx: ReadTxn) -> tuple[int, bytes]:
    """(size, root hash) of the log as of ``tx``."""
    raw = tx.get_meta(FRONTIER_KEY)
    frontier = Frontier.from_bytes(raw) if raw else Frontier()
    return frontier.size, frontier.root()
