"""The open rate limit's token buckets, on a fake clock (no mount, no sleeps)."""

from __future__ import annotations

from worm_fs.core.model import Caller
from worm_fs.core.throttle import MAX_BUCKETS, WINDOW_S, OpenThrottle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> int:
        return int(self.t * 1e9)


def throttle(rate: float) -> tuple[OpenThrottle, Clock, list[dict]]:
    clock, notes = Clock(), []
    return OpenThrottle(rate, notes.append, clock=clock, wall=clock.wall), clock, notes


ALICE, BOB, ROOT = Caller(1001, 1001, 11), Caller(1002, 1002, 12), Caller(0, 0, 1)


def test_without_a_rate_every_open_is_admitted() -> None:
    t, _, notes = throttle(0)
    assert not t.enabled
    assert all(t.admit(ALICE, 2, 0) for _ in range(100_000))
    assert notes == []


def test_a_uid_gets_a_burst_of_one_seconds_worth_then_the_rate() -> None:
    t, clock, _ = throttle(50)
    admitted = sum(t.admit(ALICE, 2, 0) for _ in range(200))
    assert admitted == 50
    clock.t += 0.1  # five tokens back
    assert sum(t.admit(ALICE, 2, 0) for _ in range(200)) == 5
    clock.t += 10  # a full bucket again, not more
    assert sum(t.admit(ALICE, 2, 0) for _ in range(200)) == 50


def test_root_is_exempt_and_other_uids_are_not_affected() -> None:
    t, _, _ = throttle(5)
    assert sum(t.admit(ALICE, 2, 0) for _ in range(100)) == 5
    assert all(t.admit(ROOT, 2, 0) for _ in range(100))
    assert sum(t.admit(BOB, 2, 0) for _ in range(5)) == 5


def test_refusals_are_summed_into_about_one_record_per_second() -> None:
    t, clock, notes = throttle(10)
    refused = 0
    for _ in range(3000):  # 3 s of 1000 attempts per second
        refused += not t.admit(ALICE, 7, 32768)
        clock.t += 0.001
        t.flush()
    t.flush(everything=True)
    assert 3 <= len(notes) <= 4
    assert sum(n["count"] for n in notes) == refused > 2900
    first = notes[0]
    assert first["uid"] == 1001 and first["pid"] == 11 and first["ino"] == 7
    assert first["flags"] == 32768 and first["rate_limit"] == 10
    assert first["first_ns"] <= first["last_ns"] < notes[1]["first_ns"]
    assert all(n["last_ns"] - n["first_ns"] <= WINDOW_S * 1e9 for n in notes)


def test_a_window_is_recorded_once_it_is_a_second_old_even_if_the_uid_stops() -> None:
    t, clock, notes = throttle(1)
    t.admit(ALICE, 2, 0)
    assert not t.admit(ALICE, 2, 0)
    assert t.flush() == 0 and notes == []
    clock.t += WINDOW_S
    assert t.flush() == 1 and notes[0]["count"] == 1
    assert t.flush() == 0


def test_idle_buckets_are_dropped_past_the_bound() -> None:
    t, clock, _ = throttle(1)
    for uid in range(1, MAX_BUCKETS + 1):
        t.admit(Caller(uid, uid, uid), 2, 0)
    clock.t += 2  # every bucket is full again
    t.admit(Caller(MAX_BUCKETS + 1, 1, 1), 2, 0)
    assert len(t._buckets) == 1
