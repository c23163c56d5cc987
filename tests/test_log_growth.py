"""What bounds and shows the growth of the audit log: per-uid usage, the open rate limit."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Mount, run_cli, wait_sealed

ALICE, BOB = 1001, 1002


def in_child(uid: int, fn: Callable[[], dict]) -> dict:
    """Run ``fn`` in a forked child with ``uid``; returns what it returned."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            out = {"error": repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    assert "error" not in out, out
    return out


def open_loop(path: Path, *, times: int | None = None, seconds: float | None = None):
    """A child's body: open and close ``path`` in a loop, counting outcomes."""

    def body() -> dict:
        ok = again = 0
        deadline = time.monotonic() + (seconds or 0)
        while (ok + again < times) if times is not None else time.monotonic() < deadline:
            try:
                os.close(os.open(path, os.O_RDONLY))
                ok += 1
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                again += 1
        return {"ok": ok, "again": again}

    return body


@pytest.fixture
def shared(public_base: Path) -> Iterator[Callable[..., tuple[Mount, Path]]]:
    """A mount other uids may use, with one sealed model in it."""
    mounts: list[Mount] = []

    def make(*options: str) -> tuple[Mount, Path]:
        m = Mount(public_base / "state", public_base / "mnt", ["--allow-other", *options])
        mounts.append(m.start())
        model = m.path / "model.safetensors"
        model.write_bytes(b"w" * 4096)
        wait_sealed(model)
        return m, model

    yield make
    for m in mounts:
        m.stop()


def records(m: Mount) -> list[dict]:
    out = run_cli("log", "show", str(m.state), "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def wait_for_records(m: Mount, want: dict[int, int], timeout: float = 10.0) -> None:
    """Wait until the store counts ``want[uid]`` records of each uid."""
    deadline = time.monotonic() + timeout
    while True:
        out = run_cli("stats", str(m.state), "--json", check=True).stdout
        by_uid = json.loads(out)["audit_by_uid"]
        if all(by_uid.get(str(uid), {}).get("records", 0) >= n for uid, n in want.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"records per uid: {by_uid}, want {want}")
        time.sleep(0.05)


def test_stats_show_records_and_bytes_per_uid(shared) -> None:
    m, model = shared()
    assert in_child(ALICE, open_loop(model, times=30)) == {"ok": 30, "again": 0}
    assert in_child(BOB, open_loop(model, times=5)) == {"ok": 5, "again": 0}
    wait_for_records(m, {ALICE: 60, BOB: 10})  # the kernel sends releases after close()
    m.stop()

    stats = json.loads(run_cli("stats", str(m.state), "--json", check=True).stdout)
    by_uid = stats["audit_by_uid"]
    assert by_uid[str(ALICE)]["records"] == 60  # an open and a release each
    assert by_uid[str(BOB)]["records"] == 10
    assert 0 < by_uid[str(BOB)]["bytes"] < 10 * 120
    assert by_uid[str(ALICE)]["throttled"] == 0
    assert sum(u["records"] for u in by_uid.values()) == stats["audit_records"]
    assert stats["audit_stored_bytes"] == sum(u["bytes"] for u in by_uid.values())
    assert 0 < stats["audit_bytes_per_record"] < 120

    human = run_cli("stats", str(m.state), check=True).stdout
    assert f"uid {ALICE}: 60 records" in human and f"uid {BOB}: 10 records" in human

    prom = run_cli("stats", str(m.state), "--prometheus", check=True).stdout
    lines = dict(line.rsplit(" ", 1) for line in prom.splitlines() if line[0] != "#")
    alice = next(k for k in lines if k.startswith("worm_fs_audit_records_by_uid_total")
                 and f'uid="{ALICE}"' in k)
    assert lines[alice] == "60"
    bob_bytes = next(k for k in lines if k.startswith("worm_fs_audit_bytes_by_uid_total")
                     and f'uid="{BOB}"' in k)
    assert int(lines[bob_bytes]) == by_uid[str(BOB)]["bytes"]


def test_a_uid_over_the_open_rate_limit_gets_eagain_and_one_record_a_second(shared) -> None:
    m, model = shared("--open-rate-limit", "50")
    alice = in_child(ALICE, open_loop(model, seconds=2.5))
    bob = in_child(BOB, open_loop(model, times=40))  # within its own burst
    root = open_loop(model, times=200)()  # root is exempt
    m.stop()

    assert alice["again"] > alice["ok"] > 0
    assert 50 <= alice["ok"] <= 50 + 50 * 3  # the burst, then about the rate
    assert bob == {"ok": 40, "again": 0} and root == {"ok": 200, "again": 0}

    log = records(m)
    throttled = [r for r in log if r["op"] == "open_throttled"]
    assert {r["uid"] for r in throttled} == {ALICE}
    assert 2 <= len(throttled) <= 4  # about one per second of refusals
    assert sum(r["count"] for r in throttled) == alice["again"]
    assert all(r["result"] == "EAGAIN" and r["path"] == "/model.safetensors"
               for r in throttled)
    opens = [r for r in log if r["op"] == "open" and r.get("uid") == ALICE]
    assert len(opens) == alice["ok"]  # the refused ones have no record each

    stats = json.loads(run_cli("stats", str(m.state), "--json", check=True).stdout)
    assert stats["audit_by_uid"][str(ALICE)]["throttled"] == alice["again"]
    prom = run_cli("stats", str(m.state), "--prometheus", check=True).stdout
    assert f'worm_fs_opens_throttled_total{{store="{store_id(m)}",uid="{ALICE}"}} ' \
           f'{alice["again"]}' in prom


def store_id(m: Mount) -> str:
    store = m.store()
    try:
        with store.read() as rt:
            return (rt.get_meta("store_id") or b"").decode()
    finally:
        store.close()


def test_without_the_setting_opens_are_never_throttled(shared) -> None:
    m, model = shared()
    assert in_child(ALICE, open_loop(model, times=500)) == {"ok": 500, "again": 0}
    m.stop()
    assert not [r for r in records(m) if r["op"] == "open_throttled"]
    mount = next(r for r in records(m) if r["op"] == "mount")
    assert "open_rate_limit" not in mount
