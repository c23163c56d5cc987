"""Per-uid rate limits: token buckets for opens and for deletion requests.

:class:`TokenBuckets` is the one token bucket; :class:`OpenThrottle` (opens) and
:class:`RequestLimiter` (deletion, retention and hold requests) each use it.

**Opens.** A token bucket per uid is checked before an open is granted.

Every open is recorded, so a reader opening one file in a loop grows the log (which is
never deleted) as fast as the daemon answers. With ``--open-rate-limit R`` each uid
may open ``R`` files per second on average, in bursts of up to ``max(R, 1)``; an open
beyond that is refused with ``EAGAIN`` before anything else is looked at. Refused opens
get no record each: per uid, the refusals of about one second are summed into one
``open_throttled`` record (``count``, ``first_ns``, ``last_ns``, and who, which file
and which flags the first refusal of the window was about). So a throttled uid adds
at most about one record per second to the log, however fast it tries.

Root (uid 0) is exempt: it is trusted with the store anyway (it can stop the daemon),
and admin and backup tools that run as root must not fail with ``EAGAIN``.

The check is O(1) under one small lock of its own, held only for a few arithmetic
operations (never with the core lock; nothing else is taken under it). Buckets live in
memory only: a restart starts every uid with a full bucket. Idle uids' buckets (full
again, no refusals waiting) are dropped once more than :data:`MAX_BUCKETS` uids have
one, so memory follows the number of uids active at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from worm_fs.core.model import Caller

#: Refusals of one uid are summed over this long into one record.
WINDOW_S = 1.0
#: Uids with a bucket beyond which idle buckets are dropped.
MAX_BUCKETS = 4096
#: Uids the limit never applies to.
EXEMPT_UIDS = frozenset({0})


class TokenBuckets:
    """A token bucket per uid: ``rate`` tokens a second, at most ``burst``; a uid seen
    for the first time starts full.

    Not locked: the owner calls it under its own lock. Idle buckets (full again, and
    not in the owner's ``busy`` set) are dropped once more than ``max_buckets`` uids
    have one, so memory follows the number of uids active at once.
    """

    def __init__(self, rate: float, burst: float, *, max_buckets: int = 4096) -> None:
        self.rate, self.burst, self.max_buckets = float(rate), float(burst), max_buckets
        #: uid -> [tokens, monotonic time of the last update].
        self._buckets: dict[int, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, uid: int, now: float, busy: Container[int] = ()) -> bool:
        """Take one token of ``uid``'s bucket at monotonic time ``now``: False if empty."""
        bucket = self._buckets.get(uid)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._prune(now, busy)
            self._buckets[uid] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _prune(self, now: float, busy: Container[int]) -> None:
        full = [uid for uid, (tokens, last) in self._buckets.items()
                if uid not in busy and tokens + (now - last) * self.rate >= self.burst]
        for uid in full:
            del self._buckets[uid]


@dataclass
class _Window:
    """Refused opens of one uid not yet recorded."""

    start: float
    first_ns: int
    first: dict[str, Any]
    count: int = 0
    last_ns: int = 0


class OpenThrottle:
    """Per-uid token buckets; ``note(fields)`` receives each aggregated record's fields
    (the caller stamps it as an ``open_throttled`` refusal)."""

    def __init__(
        self, rate: float, note: Callable[[dict[str, Any]], None], *,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, self.rate)
        self._note = note
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        #: Guarded by ``_lock``.
        self._buckets = TokenBuckets(self.rate, self.burst, max_buckets=MAX_BUCKETS)
        #: uid -> its refusals not recorded yet. Guarded by ``_lock``.
        self._windows: dict[int, _Window] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def admit(self, caller: Caller, ino: int, flags: int) -> bool:
        """Take one token of ``caller.uid``'s bucket: True if the open may go on, False
        if it is refused (counted into the uid's next ``open_throttled`` record)."""
        if self.rate <= 0 or caller.uid in EXEMPT_UIDS:
            return True
        now = self._clock()
        due: _Window | None = None
        with self._lock:
            if self._buckets.take(caller.uid, now, busy=self._windows):
                return True
            wall = self._wall()
            window = self._windows.get(caller.uid)
            if window is None:
                window = self._windows[caller.uid] = _Window(
                    start=now, first_ns=wall,
                    first={"gid": caller.gid, "pid": caller.pid, "comm": caller.comm,
                           "ino": ino, "flags": flags})
            window.count += 1
            window.last_ns = wall
            if now - window.start >= WINDOW_S:
                due = self._windows.pop(caller.uid)
        if due is not None:
            self._note(self._fields(caller.uid, due))
        return False

    def flush(self, *, everything: bool = False) -> int:
        """Record the windows at least :data:`WINDOW_S` old (all with ``everything``,
        at shutdown); returns how many records were noted. Cheap when nothing is
        throttled: the daemon calls it with every group commit tick."""
        if not self._windows:
            return 0
        now = self._clock()
        with self._lock:
            uids = [uid for uid, w in self._windows.items()
                    if everything or now - w.start >= WINDOW_S]
            due = [(uid, self._windows.pop(uid)) for uid in uids]
        for uid, window in due:
            self._note(self._fields(uid, window))
        return len(due)

    def _fields(self, uid: int, window: _Window) -> dict[str, Any]:
        return {"uid": uid, **window.first, "count": window.count,
                "first_ns": window.first_ns, "last_ns": window.last_ns,
                "rate_limit": self.rate}



class RequestLimiter:
    """Per-uid token buckets for new deletion/retention/hold requests, and one refusal
    record per uid and second.

    In memory, under its own lock: a flood of requests is turned away before anything
    is walked, read or written, and the refusals it causes are recorded aggregated
    (``suppressed`` counts those since the last record), so the flood cannot grow the
    audit log either.
    """

    def __init__(self, burst: int, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        #: Guarded by ``_lock``.
        self._buckets = TokenBuckets(1.0 / interval_s, burst, max_buckets=65_536)
        self._refused: dict[int, tuple[float, int]] = {}  # uid -> (last record, suppressed)

    def take(self, uid: int) -> bool:
        now = self.clock()
        with self._lock:
            return self._buckets.take(uid, now)

    def should_record(self, uid: int) -> int | None:
        """None: fold this refusal into the next record; else the refusals folded so far."""
        now = self.clock()
        with self._lock:
            last, suppressed = self._refused.get(uid, (-1e18, 0))
            if now - last < 1.0:
                self._refused[uid] = (last, suppressed + 1)
                return None
            self._refused[uid] = (now, 0)
            return suppressed


__all__ = ["EXEMPT_UIDS", "MAX_BUCKETS", "WINDOW_S", "OpenThrottle", "RequestLimiter",
           "TokenBuckets"]
