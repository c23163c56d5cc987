"""A clock that never goes back, for seal times, retention and request expiry.

The store keeps the latest time it has seen (a high-water mark in ``meta``). Trusted
time is the later of the wall clock and that mark, so setting the system clock back
cannot make a file look sealed earlier (shortening its retention) or a request younger.
"""

from __future__ import annotations

from worm_fs.store import ReadTxn, WriteTxn, u64

CLOCK_KEY = "clock_high_water_ns"


def trusted_now(txn: ReadTxn, wall_ns: int) -> int:
    """Wall time, but never earlier than any time this store has already seen."""
    return max(wall_ns, txn.get_counter(CLOCK_KEY))


def advance_clock(tx: WriteTxn, wall_ns: int) -> int:
    """Trusted time, recorded as the new high-water mark (inside ``tx``)."""
    now = trusted_now(tx, wall_ns)
    tx.put_meta(CLOCK_KEY, u64(now))
    return now
