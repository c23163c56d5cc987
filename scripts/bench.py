#!/usr/bin/env python3
"""Benchmark worm-fs against a native directory on the same disk.

Run through ``scripts/bench`` (which builds the venv first); ``--help`` explains the
metrics, targets and options. Only the ``worm-fs`` command line is used, never the
package's internals, so the benchmark measures what users get (a command run as another
user calls the CLI's ``main`` in a forked child, see :func:`run_cli_as`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = MiB  # write and read block size
STAMP_EVERY = 4 * KiB  # a unique counter every 4 KiB defeats dedup of repeated data
POOL_SIZE = 64 * MiB  # pregenerated random bytes the written data is cut from
SMALL_FILE_SIZE = 4 * KiB
SEAL_TIMEOUT = 600.0  # seconds a closed worm-fs file may take to report "sealed"
RECORD_OPENS_PER_FILE = 10  # records phase: opens per --small-files
REPL_FILE = 8 * MiB  # replication phase: the size of each file written
#: replication phase: the (metric, side) each store's write rate counts for.
WRITE_SIDES = {"no_bucket": (("write_with_bucket", "no_bucket"), ("write_sync", "no_bucket")),
               "bucket": (("write_with_bucket", "worm"),),
               "sync": (("write_sync", "worm"),)}
REPLICA_GETTERS = 16  # replica phase: parallel ranged GETs of the baseline (= the replica's)
# Fragmentation phase: a second store is filled with FRAG_FILL_FACTOR x --size of files
# (a quarter log-uniform 4 KiB..1 MiB, the rest uniform 1..8 MiB, sizes from a fixed seed
# so runs are comparable), every other one is deleted, then --size is written.
FRAG_FILL_FACTOR = 2
FRAG_MAX_FILE = 8 * MiB
FRAG_SEED = 20261127
FRAG_REQUESTER = 1001  # uid (and gid) that requests the deletion; root approves it
CLI_TIMEOUT = 300.0  # seconds one `worm-fs delete ...` command may take
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Concurrency phases: each writer/reader is a separate (forked) process, both sides get
# the same number of them, and the time runs from the first one starting (all start
# together, after a barrier) to the last one finishing.
SMALL_WRITERS = (1, 4, 16)  # small_files_{N}w: --conc-files 4 KiB files split over N
LARGE_WRITERS = (4, 8)  # large_{N}w: each process writes one --large-size file
RSS_WRITERS = 8  # peak_rss_8w: the daemon's anonymous RSS is sampled during large_8w
READERS = 8  # cold_read_8r: 8 processes read 8 different --large-size files
READ_REQUEST = 128 * KiB  # cold_read_128k: the read() size
LAT_WRITERS = 2  # latency_under_write: large-file writers running meanwhile
LAT_WARMUP = 0.3  # seconds the writers run before the first latency sample
LAT_PACE = 0.003  # seconds between latency samples
LAT_WRITE_MIN_CAP = GiB  # a worm-fs latency writer stops after max(8 x --large-size, this)
LAT_NATIVE_CAP = 64 * GiB  # a native one only keeps its last LAT_NATIVE_KEEP files
LAT_NATIVE_KEEP = 2
WORKER_POOL = 16 * MiB  # random data pool of one large-file writer process
GUARD_INTERVAL = 0.25  # seconds between checks that the mount is still there
WORKER_START_TIMEOUT = 120.0  # seconds the worker processes may take to get ready
PHASE_TIMEOUT = 1800.0  # seconds one group of worker processes may run
# Integer fields of `worm-fs stats --json` counting the daemon's commits (newer daemons).
COMMIT_FIELDS = ("commits", "commit_changes", "commit_flushes", "commit_records")

#: The phases --only can pick, in the order a run does them.
PHASES = {
    "rss": "daemon peak RSS writing one --big-size file (first, on a fresh daemon)",
    "sequential": "one-process write + fsync, cold read, warm re-read, daemon CPU",
    "small": "4 KiB files: one process (+ os.stat), then 1, 4 and 16 writer processes",
    "large": "4 and 8 processes each writing one --large-size file; daemon RssAnon",
    "reads": "cold read with 128 KiB read()s; 8 processes cold-reading 8 files",
    "latency": "open/stat/pread p50 and p99 while 2 processes write large files",
    "audit": "cold and warm re-read on a mount with --audit-reads each (needs sequential)",
    "frag": "write after deleting half of a store, vs a fresh store",
    "records": "stored bytes per audit record: an open/close loop on its own store",
    "replication": "upload to scripts/ceph-dev's RGW vs plain S3 PUTs; writes with a bucket",
    "replica": "reads through a --replica mount vs ranged S3 GETs and a primary's cold read",
}

DEFAULTS = {"size": GiB, "big_size": 4 * GiB, "small_files": 2000, "reps": 3,
            "large_size": 256 * MiB, "conc_files": 2000, "latency_samples": 300}
QUICK = {"size": 64 * MiB, "big_size": 256 * MiB, "small_files": 200, "reps": 1,
         "large_size": 32 * MiB, "conc_files": 400, "latency_samples": 100}


class BenchError(Exception):
    """The run could not measure; the message is the one-line reason."""


class NotMeasured(Exception):
    """A metric that cannot be measured yet; its row shows ``n/a (reason)``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, handled like Ctrl-C."""


# ---------------------------------------------------------------------- metrics and targets
@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    value: float
    relative: bool  # True: compare worm-fs/native; False: compare the worm-fs value

    def text(self, unit: str, baseline: str = "native") -> str:
        if self.relative:
            value = f"{self.value:g}" if self.value % 1 else f"{self.value:.1f}"
            return f"{self.op} {value}x" + ("" if baseline == "native" else f" {baseline}")
        return f"{self.op} {self.value:g} {unit}"

    def met(self, worm: float | None, ratio: float | None) -> bool | None:
        value = ratio if self.relative else worm
        if value is None:
            return None
        return value >= self.value if self.op == ">=" else value <= self.value


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    digits: int
    target: Target | None
    native: bool = True  # has a native counterpart
    baseline: str = "native"  # the side the ratio divides by
    phase: str = "sequential"  # the --only phase that measures it


def _latency_metrics() -> tuple[Metric, ...]:
    """latency_under_write_{open,stat,pread}_{p50,p99}; p99 of open and stat have targets."""
    what = {"open": "os.open+close", "stat": "os.stat", "pread": "4 KiB os.pread"}
    return tuple(
        Metric(f"latency_under_write_{op}_{q}", f"{label} {q}, 2 writers running", "ms", 2,
               Target("<=", 5, False) if q == "p99" and op != "pread" else None,
               phase="latency")
        for op, label in what.items() for q in ("p50", "p99")
    )


METRICS = (
    Metric("seq_write", "sequential write + fsync", "MB/s", 1, Target(">=", 0.5, True)),
    Metric("fresh_read", "read right after the write, 128 KiB read()s", "MB/s", 1, None),
    Metric("cold_read", "cold sequential read", "MB/s", 1, Target(">=", 1.0, True)),
    Metric("warm_read", "warm re-read", "MB/s", 1, Target(">=", 0.75, True)),
    Metric("small_files", "small files, 4 KiB create+write+close", "files/s", 0,
           Target(">=", 3000, False), phase="small"),
    Metric("stat", "os.stat over those files", "calls/s", 0, Target(">=", 15000, False),
           phase="small"),
    *(Metric(f"small_files_{n}w", f"4 KiB files, {n} writer process{'es' * (n > 1)}",
             "files/s", 0, Target(">=", 0.35 if n == 1 else 0.5, True), phase="small")
      for n in SMALL_WRITERS),
    Metric("cpu_per_gib", "daemon CPU per GiB written", "s/GiB", 2, Target("<=", 1.2, False),
           native=False),
    Metric("peak_rss", "daemon peak RSS (big-file write)", "MiB", 1, Target("<=", 200, False),
           native=False, phase="rss"),
    *(Metric(f"large_{n}w", f"large files, {n} writer processes", "MB/s", 1,
             Target(">=", 0.6, True) if n == 4 else None, phase="large")
      for n in LARGE_WRITERS),
    Metric("peak_rss_8w", f"daemon peak RssAnon, {RSS_WRITERS} large writers", "MiB", 1,
           Target("<=", 300, False), native=False, phase="large"),
    Metric("cold_read_128k", "cold sequential read, 128 KiB read()s", "MB/s", 1,
           Target(">=", 0.7, True), phase="reads"),
    Metric("cold_read_8r", f"cold read, {READERS} reader processes", "MB/s", 1,
           Target(">=", 0.5, True), phase="reads"),
    *_latency_metrics(),
    Metric("audit_cold_read", "cold read, --audit-reads each", "MB/s", 1,
           Target(">=", 0.7, True), phase="audit"),
    Metric("audit_warm_read", "warm re-read, --audit-reads each", "MB/s", 1, None,
           phase="audit"),
    Metric("frag_write", "write after deleting half of a store", "MB/s", 1,
           Target(">=", 0.8, True), native=False, baseline="fresh", phase="frag"),
    Metric("audit_bytes_open", "stored bytes per audit record, open/close loop", "B", 1,
           Target("<=", 120, False), native=False, phase="records"),
    Metric("audit_json_bytes_open", "canonical JSON bytes per record, same loop", "B", 1,
           None, native=False, phase="records"),
    Metric("audit_bytes_all", "stored bytes per audit record, whole store", "B", 1, None,
           native=False, phase="records"),
    Metric("audit_open_rate", "open+pread+close of a sealed file, 1 process", "opens/s",
           0, None, native=False, phase="records"),
    Metric("upload", "upload of a store to its bucket (queue full to empty)", "MB/s", 1,
           Target(">=", 0.8, True), native=False, baseline="s3_put", phase="replication"),
    Metric("write_with_bucket", "write + fsync, --bucket (async)", "MB/s", 1,
           Target(">=", 0.9, True), native=False, baseline="no_bucket", phase="replication"),
    Metric("write_sync", "write + fsync, --bucket --replicate sync", "MB/s", 1, None,
           native=False, baseline="no_bucket", phase="replication"),
    Metric("replica_cold_read", "cold sequential read, --replica mount (nothing cached)",
           "MB/s", 1, Target(">=", 0.7, True), native=False, baseline="s3_get",
           phase="replica"),
    Metric("replica_cached_read", "re-read from a replica's chunk cache (page cache dropped)",
           "MB/s", 1, Target(">=", 0.8, True), native=False, baseline="primary_cold",
           phase="replica"),
    Metric("replica_ttfb", "time to first byte of a --size file, --replica mount", "s", 2,
           None, native=False, phase="replica"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, key: str, side: str, value: float) -> None:
        assert key in METRIC_BY_KEY, key
        self.samples.setdefault(key, {}).setdefault(side, []).append(value)

    def rows(self, phases: frozenset[str] = frozenset(PHASES)) -> list[dict[str, Any]]:
        """One row per metric; those of phases not run (--only) say "not run"."""
        rows = []
        for m in METRICS:
            got = self.samples.get(m.key, {})
            native = statistics.median(got["native"]) if got.get("native") else None
            worm = statistics.median(got["worm"]) if got.get("worm") else None
            base = statistics.median(got[m.baseline]) if got.get(m.baseline) else None
            ratio = worm / base if worm is not None and base else None
            note = self.notes.get(m.key)
            met = m.target.met(worm, ratio) if m.target else None
            if m.phase not in phases:
                status = "not run"
            elif note:
                status = f"n/a ({note})"
            elif m.target is None:
                status = "-"
            elif met is None:
                status = "n/a"
            else:
                status = "met" if met else "MISSED"
            rows.append({
                "key": m.key, "metric": m.label, "unit": m.unit, "phase": m.phase,
                "native": _round(native), "worm": _round(worm), "ratio": _round(ratio),
                "baseline": m.baseline, "baseline_value": _round(base),
                "target": m.target.text(m.unit, m.baseline) if m.target else None,
                "target_spec": (
                    {"op": m.target.op, "value": m.target.value,
                     "of": "ratio" if m.target.relative else "worm"} if m.target else None
                ),
                "met": met, "status": status, "note": note,
                "samples": {side: [_round(v) for v in got.get(side, [])]
                            for side in dict.fromkeys(("native", "worm", m.baseline))},
            })
        return rows


# ---------------------------------------------------------------------- small helpers
def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M, 1G, 4GiB)")
    scale = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value < SMALL_FILE_SIZE:
        raise argparse.ArgumentTypeError(f"size too small: {text!r} (at least 4 KiB)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def mounts() -> list[tuple[str, str, str]]:
    """(device, mountpoint, fstype) of every mount, from /proc/self/mounts."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out.append((fields[0], fields[1].replace("\\040", " "), fields[2]))
    return out


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mountpoint, even a dead FUSE one (os.path.ismount says no)."""
    return any(mp == str(path) for _, mp, _ in mounts())


def mount_of(path: Path) -> tuple[str, str, str]:
    """The mount holding ``path``: (device, mountpoint, fstype)."""
    real = str(path.resolve())
    best = ("?", "/", "?")
    for dev, mp, fstype in mounts():
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best[1]):
            best = (dev, mp, fstype)
    return best


def remove_bucket(client: Any, bucket: str) -> None:
    """Delete every version in ``bucket`` and the bucket (objects were put unlocked);
    best effort: a bucket left behind only takes space on the dev cluster."""
    try:
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            items = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                     for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for start in range(0, len(items), 1000):
                client.delete_objects(Bucket=bucket, Delete={
                    "Objects": items[start:start + 1000], "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's result
        print(f"bench: could not remove bucket {bucket}: {exc}", file=sys.stderr)


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise BenchError(f"cannot drop the page cache (/proc/sys/vm/drop_caches: "
                         f"{exc.strerror}); run as root on a host that allows it") from None


def daemon_cpu_seconds(pid: int) -> float:
    """utime + stime of all the daemon's threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5\n")


def memory_status(pid: int) -> dict[str, int]:
    """The Vm*/Rss* lines of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                out[name] = int(rest.split()[0]) * KiB
    if "VmHWM" not in out:
        raise BenchError(f"no VmHWM in /proc/{pid}/status")
    return out


class MemorySampler(threading.Thread):
    """Samples a process's anonymous and file-backed RSS while a measurement runs.

    VmHWM is the metric; the samples only tell what it is made of (the daemon's own
    memory vs. pages of the mapped store file, which the kernel can reclaim).
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_anon = 0
        self.peak_file = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                status = memory_status(self.pid)
            except (OSError, BenchError):
                return
            self.peak_anon = max(self.peak_anon, status.get("RssAnon", 0))
            self.peak_file = max(self.peak_file, status.get("RssFile", 0))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def machine_info(work_dir: Path) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * KiB
    except OSError:
        pass
    device, mountpoint, fstype = mount_of(work_dir)
    try:
        from importlib.metadata import version

        worm_version = version("worm-fs")
    except Exception:
        worm_version = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "kernel": platform.release(),
        "work_dir": str(work_dir),
        "filesystem": fstype,
        "device": device,
        "device_mountpoint": mountpoint,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_at_start": os.getloadavg()[0],
        "worm_fs_version": worm_version,
    }


# ---------------------------------------------------------------------- test data
class RandomData:
    """Incompressible, never-repeating data cut from one pregenerated random pool.

    Each block is a slice of the pool at a random 4 KiB offset, with a run-wide counter
    written over its first 8 bytes of every 4 KiB, so no two 4 KiB pieces written in a
    run are equal (worm-fs deduplicates chunks; repeated data would flatter it). The
    slice is returned as a view, so nothing is copied before ``os.write``.
    """

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        self.pool = bytearray(os.urandom(pool_size + BLOCK))
        self.view = memoryview(self.pool)
        self.words = self.view.cast("Q")
        self.rng = random.Random(os.urandom(16))
        self.counter = self.rng.getrandbits(62)
        self.slots = pool_size // STAMP_EVERY

    def block(self, n: int = BLOCK) -> memoryview:
        assert 0 < n <= BLOCK
        off = self.rng.randrange(self.slots) * STAMP_EVERY
        count = -(-n // STAMP_EVERY)
        step = STAMP_EVERY // 8
        first = off // 8
        self.words[first : first + count * step : step] = array(
            "Q", range(self.counter, self.counter + count)
        )
        self.counter += count
        return self.view[off : off + n]


# ---------------------------------------------------------------------- worm-fs mounts
def worm_command() -> list[str]:
    script = Path(sys.executable).parent / "worm-fs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worm_fs"]


class WormMount:
    """One ``worm-fs mount``; :meth:`stop` always leaves nothing mounted or running."""

    def __init__(self, state_dir: Path, mountpoint: Path, audit_reads: str,
                 options: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.mountpoint = mountpoint
        self.audit_reads = audit_reads
        self.options = options
        self.pid: int | None = None
        self.started = False

    def start(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        self.started = True  # from here on, stop() has something to clean
        try:
            done = subprocess.run(
                [*worm_command(), "mount", str(self.state_dir), str(self.mountpoint),
                 "--audit-reads", self.audit_reads, *self.options],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired:
            raise BenchError("worm-fs mount did not return within 300 s") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise BenchError(f"worm-fs mount failed (exit {done.returncode}): "
                             f"{lines[-1] if lines else 'no message'}")
        try:
            self.pid = int(os.getxattr(self.mountpoint, "user.worm.pid"))
        except (OSError, ValueError) as exc:
            raise BenchError(f"mounted, but no daemon pid in user.worm.pid: {exc}") from None
        if not os.path.exists(f"/proc/{self.pid}/stat"):
            raise BenchError(f"worm-fs daemon pid {self.pid} is not running")

    def stop(self) -> list[str]:
        """Unmount and wait for the daemon to exit; returns warnings (never raises)."""
        if not self.started:
            return []
        self.started = False
        warnings: list[str] = []
        if is_mounted(self.mountpoint):
            try:
                done = subprocess.run(
                    [*worm_command(), "umount", str(self.mountpoint)],
                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                )
                if done.returncode != 0:
                    lines = done.stderr.strip().splitlines() or ["no message"]
                    warnings.append(f"worm-fs umount failed (exit {done.returncode}): "
                                    f"{lines[-1]}")
            except (OSError, subprocess.SubprocessError) as exc:
                warnings.append(f"worm-fs umount: {exc}")
        if is_mounted(self.mountpoint):
            try:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=60)
                warnings.append(f"lazily unmounted {self.mountpoint} (fusermount3 -u -z)")
            except (OSError, subprocess.SubprocessError) as exc:
                warnings.append(f"fusermount3 -u -z: {exc}")
        if self.pid is not None and not self._wait_exit(30):
            warnings.append(f"worm-fs daemon {self.pid} still running; sent SIGTERM")
            self._signal(signal.SIGTERM)
            if not self._wait_exit(10):
                warnings.append(f"worm-fs daemon {self.pid} killed")
                self._signal(signal.SIGKILL)
                self._wait_exit(5)
        if is_mounted(self.mountpoint):
            warnings.append(f"{self.mountpoint} is still mounted")
        return warnings

    def _signal(self, signum: int) -> None:
        if not self.pid or self.pid <= 1:
            return  # never a process group or init
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _wait_exit(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return True
            except OSError:
                return True
            time.sleep(0.05)
        return False


def wait_sealed(path: str, deadline: float) -> None:
    """Wait until worm-fs reports ``path`` sealed (writers' closes seal asynchronously)."""
    delay = 0.0005
    while True:
        try:
            state = os.getxattr(path, "user.worm.state")
        except OSError as exc:
            raise BenchError(f"cannot read the state of {path}: {exc.strerror}") from None
        if state == b"sealed":
            return
        if state not in (b"writing",):
            raise BenchError(f"{path} ended {state.decode(errors='replace')}, not sealed")
        if time.monotonic() > deadline:
            raise BenchError(f"{path} not sealed {SEAL_TIMEOUT:.0f} s after close")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------------- worker processes
class WorkerAbort(Exception):
    """A worker process stops early; ``primary`` is False when another failure caused it."""

    def __init__(self, message: str, primary: bool = True) -> None:
        super().__init__(message)
        self.primary = primary


class MountGuard:
    """Stops write loops when the directory they write into is no longer the one it was.

    Created on a side's root (the worm-fs mountpoint or the native directory); if the
    mount goes away, the mountpoint's st_dev changes (or stat fails on a dead FUSE mount),
    and :meth:`check` raises BenchError instead of letting the loop write into the bare
    directory. The check costs one stat every GUARD_INTERVAL seconds at most.
    """

    def __init__(self, root: Path, must_be_mount: bool) -> None:
        if must_be_mount and not is_mounted(root):
            raise BenchError(f"{root} is not mounted (did the worm-fs daemon exit?)")
        self.root = str(root)
        self.dev = os.stat(root).st_dev
        self.next_check = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + GUARD_INTERVAL
        try:
            dev = os.stat(self.root).st_dev
        except OSError as exc:
            raise BenchError(f"{self.root} is gone ({exc.strerror}); stopped") from None
        if dev != self.dev:
            raise BenchError(f"{self.root} is no longer mounted; stopped")


@dataclass
class WorkerEnv:
    """What a worker process gets: its index, the mount guard and two shared events."""

    index: int
    guard: MountGuard
    stop: Any  # multiprocessing Event: abort now (another worker failed, or Ctrl-C)
    finish: Any  # multiprocessing Event: open-ended loops end normally

    def check(self) -> None:
        if self.stop.is_set():
            raise WorkerAbort("stopped by the benchmark", primary=False)
        self.guard.check()


#: A job prepares (before the start barrier: data, buffers) and returns the function
#: that does the measured work and returns a JSON-able payload.
Job = Callable[..., Callable[[], dict[str, Any]]]


@dataclass
class WorkerRun:
    elapsed: float  # the first worker's start to the last one's end, seconds
    payloads: list[dict[str, Any]]  # by worker index


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    if isinstance(exc, (WorkerAbort, BenchError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _worker_main(job: Job, kwargs: dict[str, Any], env: WorkerEnv, barrier: Any,
                 results: Any) -> None:
    """A worker process: prepare, wait for the others, run, report (index, error, ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    try:
        run = job(env, **kwargs)
    except BaseException as exc:
        results.put((env.index, f"preparing: {_describe(exc)}", True, 0.0, 0.0, None))
        barrier.abort()
        return
    try:
        barrier.wait(timeout=WORKER_START_TIMEOUT)
    except threading.BrokenBarrierError:
        results.put((env.index, "another process failed to start", False, 0.0, 0.0, None))
        return
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    try:
        payload = run()
    except BaseException as exc:
        primary = not isinstance(exc, WorkerAbort) or exc.primary
        results.put((env.index, _describe(exc), primary, start, 0.0, None))
        return
    results.put((env.index, None, True, start, time.perf_counter(), payload))


def write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def small_files_job(env: WorkerEnv, directory: str, count: int,
                    fsync: bool) -> Callable[[], dict[str, Any]]:
    """``count`` new 4 KiB files f00000, f00001, ... in ``directory``: open(O_CREAT),
    write, fsync if ``fsync`` (native), close."""
    data = RandomData(MiB)
    contents = [bytes(data.block(SMALL_FILE_SIZE)) for _ in range(count)]
    paths = [os.path.join(directory, f"f{i:05d}") for i in range(count)]

    def run() -> dict[str, Any]:
        write_small_files(paths, contents, fsync=fsync, check=env.check)
        return {"files": count}

    return run


def write_small_files(paths: list[str], contents: list[bytes], *, fsync: bool,
                      check: Callable[[], None]) -> None:
    """Create each of ``paths`` (it must not exist), write its content, ``fsync`` if
    asked, close; ``check()`` before each file stops the loop when the mount is gone."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for path, content in zip(paths, contents, strict=True):
        check()
        fd = os.open(path, flags, 0o644)
        try:
            if os.write(fd, content) != len(content):
                raise BenchError(f"short write to {path}")
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def one_large_file_each(base: Path, writers: int, size: int, seal: bool
                        ) -> list[tuple[Job, dict[str, Any]]]:
    """Jobs for ``writers`` processes that each write one ``size``-byte file into their
    own new directory under ``base``."""
    jobs: list[tuple[Job, dict[str, Any]]] = []
    for j in range(writers):
        directory = base / f"w{j}"
        directory.mkdir()
        jobs.append((large_writer_job, {"directory": str(directory), "size": size,
                                        "files": 1, "seal": seal, "open_ended": False}))
    return jobs


def large_writer_job(env: WorkerEnv, directory: str, size: int, files: int, seal: bool,
                     open_ended: bool, keep: int = 0) -> Callable[[], dict[str, Any]]:
    """Up to ``files`` new files of ``size`` bytes in ``directory`` (1 MiB writes, fsync
    at the end of each, close; with ``seal``, wait until worm-fs reports it sealed).
    ``open_ended``: stop early, mid-file too, once the finish event is set. ``keep``
    (native only): remove all but the last ``keep`` files written."""
    data = RandomData(WORKER_POOL)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def run() -> dict[str, Any]:
        written = 0
        paths: list[str] = []
        for i in range(files):
            if open_ended and env.finish.is_set():
                break
            path = os.path.join(directory, f"f{i:03d}.bin")
            fd = os.open(path, flags, 0o644)
            paths.append(path)
            try:
                left = size
                while left:
                    env.check()
                    if open_ended and env.finish.is_set():
                        break
                    n = min(BLOCK, left)
                    write_all(fd, data.block(n))
                    left -= n
                    written += n
                if not left:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if seal:
                wait_sealed(path, time.monotonic() + SEAL_TIMEOUT)
            if keep and len(paths) > keep:
                os.unlink(paths.pop(0))
        return {"bytes": written, "paths": paths}

    return run


def reader_job(env: WorkerEnv, path: str, expected: int,
               block: int) -> Callable[[], dict[str, Any]]:
    """Read ``path`` front to back with ``block``-byte read() calls."""
    buf = bytearray(block)

    def run() -> dict[str, Any]:
        total = 0
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
                env.check()
        if total != expected:
            raise BenchError(f"read {total} bytes of {path}, expected {expected}")
        return {"bytes": total}

    return run


def latency_job(env: WorkerEnv, open_paths: list[str], stat_paths: list[str],
                read_paths: list[str]) -> Callable[[], dict[str, Any]]:
    """Latency samples, each on names not looked up before: os.open(O_RDONLY)+close of
    one file, os.stat of another, a 4 KiB os.pread at offset 0 of a third (its open is
    not timed). Ends early when the finish event is set (the writers are done)."""

    def run() -> dict[str, Any]:
        clock = time.perf_counter
        env.finish.wait(LAT_WARMUP)  # let the writers get going
        opens: list[float] = []
        stats: list[float] = []
        preads: list[float] = []
        for a, b, c in zip(open_paths, stat_paths, read_paths, strict=True):
            if env.finish.is_set():
                break
            env.check()
            t0 = clock()
            os.close(os.open(a, os.O_RDONLY | os.O_CLOEXEC))
            t1 = clock()
            os.stat(b)
            t2 = clock()
            fd = os.open(c, os.O_RDONLY | os.O_CLOEXEC)
            try:
                t3 = clock()
                got = len(os.pread(fd, SMALL_FILE_SIZE, 0))
                t4 = clock()
            finally:
                os.close(fd)
            if got != SMALL_FILE_SIZE:
                raise BenchError(f"read {got} bytes of {c}, expected {SMALL_FILE_SIZE}")
            opens.append(t1 - t0)
            stats.append(t2 - t1)
            preads.append(t4 - t3)
            time.sleep(LAT_PACE)
        return {"open": opens, "stat": stats, "pread": preads}

    return run


def run_workers(what: str, guard: MountGuard, jobs: list[tuple[Job, dict[str, Any]]],
                before_start: Callable[[], None] | None = None,
                finish_when: Callable[[set[int]], bool] | None = None) -> WorkerRun:
    """Run each job in a forked process of its own, all starting at once.

    ``before_start`` runs in this process after every worker is forked (start sampler
    threads there, never before a fork). ``finish_when(reported)`` is asked after each
    report; when it says yes, the finish event ends the open-ended loops. A worker's
    failure stops the others and raises BenchError; every worker is reaped on the way
    out, on Ctrl-C too.
    """
    ctx = multiprocessing.get_context("fork")
    stop, finish = ctx.Event(), ctx.Event()
    barrier = ctx.Barrier(len(jobs) + 1)
    results = ctx.Queue()
    procs: list[Any] = []
    try:
        for index, (job, kwargs) in enumerate(jobs):
            env = WorkerEnv(index, guard, stop, finish)
            proc = ctx.Process(target=_worker_main, name=f"bench-worker-{index}",
                               args=(job, kwargs, env, barrier, results), daemon=True)
            proc.start()
            procs.append(proc)
        if before_start is not None:
            before_start()
        try:
            barrier.wait(timeout=WORKER_START_TIMEOUT)
        except threading.BrokenBarrierError:
            pass  # a worker failed to prepare (its report says why), or they were too slow
        reports = _collect(what, procs, results, stop, finish, finish_when)
    finally:
        _reap(procs, stop)
        results.close()
    starts = [r[0] for r in reports]
    ends = [r[1] for r in reports]
    return WorkerRun(elapsed=max(ends) - min(starts), payloads=[r[2] for r in reports])


def _collect(what: str, procs: list[Any], results: Any, stop: Any, finish: Any,
             finish_when: Callable[[set[int]], bool] | None
             ) -> list[tuple[float, float, dict[str, Any]]]:
    """Every worker's (start, end, payload), by index; BenchError on the first failure."""
    n = len(procs)
    done: dict[int, tuple[float, float, dict[str, Any]]] = {}
    failed: dict[int, str] = {}
    silent_since: dict[int, float] = {}
    deadline = time.monotonic() + WORKER_START_TIMEOUT + PHASE_TIMEOUT
    primary: str | None = None
    while len(done) + len(failed) < n:
        try:
            index, error, is_primary, start, end, payload = results.get(timeout=0.2)
        except queue.Empty:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"{what}: the worker processes did not finish within "
                                 f"{PHASE_TIMEOUT:.0f} s") from None
            for i, proc in enumerate(procs):
                if i in done or i in failed or proc.exitcode is None:
                    continue
                if now - silent_since.setdefault(i, now) > 2.0:  # its report may lag
                    failed[i] = f"exited with status {proc.exitcode} without a report"
                    primary = primary or f"process {i + 1}/{n} {failed[i]}"
                    stop.set()
            continue
        if error is not None:
            failed[index] = error
            if is_primary and primary is None:
                primary = f"process {index + 1}/{n}: {error}"
            stop.set()
            continue
        done[index] = (start, end, payload)
        if finish_when is not None and finish_when(set(done)):
            finish.set()
    if failed:
        first = min(failed)
        raise BenchError(f"{what}: {primary or f'process {first + 1}/{n}: {failed[first]}'}")
    return [done[i] for i in range(n)]


def _reap(procs: list[Any], stop: Any) -> None:
    """Wait for the worker processes; SIGTERM (then SIGKILL) any that linger."""
    if any(proc.is_alive() for proc in procs):
        stop.set()
    deadline = time.monotonic() + 10
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # our own child, by its pid
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def commit_batching(before: dict[str, int] | None, after: dict[str, int] | None,
                    files: int) -> dict[str, float | None]:
    """Per closed file and per commit figures from two `worm-fs stats` readings; None
    where a counter is missing (older daemons have none of them)."""

    def delta(name: str) -> int | None:
        if before is None or after is None or name not in before or name not in after:
            return None
        return after[name] - before[name]

    commits = delta("commits")

    def per_commit(name: str) -> float | None:
        value = delta(name)
        return None if value is None or not commits else value / commits

    return {
        "files": files,
        "commits": commits,
        "commits_per_file": None if commits is None else commits / files,
        "flushes_per_commit": per_commit("commit_flushes"),
        "changes_per_commit": per_commit("commit_changes"),
        "records_per_commit": per_commit("commit_records"),
    }


def batching_text(b: dict[str, Any]) -> str:
    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    return (f"commits per closed file: {num(b['commits_per_file'])} (flushes per commit "
            f"{num(b['flushes_per_commit'])}, changes per commit "
            f"{num(b['changes_per_commit'])}, audit records per commit "
            f"{num(b['records_per_commit'])})")


# ---------------------------------------------------------------------- deletion helpers
def frag_sizes(total: int) -> list[int]:
    """File sizes for the fragmentation fill: at least ``total`` bytes, an even count.

    A quarter of the files are log-uniform in 4 KiB..1 MiB, the rest uniform in
    1..8 MiB; sizes are not aligned, so most files end in a short chunk. The seed is
    fixed, so every run (and the space estimate) sees the same mix.
    """
    rng = random.Random(FRAG_SEED)
    sizes: list[int] = []
    filled = 0
    while filled < total or len(sizes) < 2 or len(sizes) % 2:
        if rng.random() < 0.25:
            size = int(SMALL_FILE_SIZE * (MiB / SMALL_FILE_SIZE) ** rng.random())
        else:
            size = rng.randint(MiB, FRAG_MAX_FILE)
        sizes.append(size)
        filled += size
    return sizes


def unsearchable_dir(path: Path) -> Path | None:
    """The first directory from / down to ``path`` that other users cannot search."""
    real = path.resolve()
    for directory in [*reversed(real.parents), real]:
        if not os.stat(directory).st_mode & 0o001:
            return directory
    return None


def run_cli(argv: list[str], timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
    """Run ``worm-fs ARGV`` as this process's user: (exit code, stdout, stderr)."""
    try:
        done = subprocess.run([*worm_command(), *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"worm-fs {' '.join(argv[:2])} did not return within "
                         f"{timeout:.0f} s") from None
    return done.returncode, done.stdout, done.stderr


def run_cli_as(uid: int, gid: int, argv: list[str],
               timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
    """Run ``worm-fs ARGV`` as ``uid``/``gid`` (no supplementary groups).

    The command's ``main`` runs in a forked child that dropped its identity with setuid:
    the interpreter may live where that uid cannot read (under /root, say), so no new
    python is executed, and the CLI with what it imports lazily is loaded before the
    fork. Returns (exit code, stdout, stderr).
    """
    import worm_fs.control.client  # noqa: F401 -- imported lazily by the CLI
    from worm_fs.cli import main as cli_main

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        out, err = io.StringIO(), io.StringIO()
        try:
            os.close(read_fd)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with redirect_stdout(out), redirect_stderr(err):
                code = cli_main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # report anything to the parent
            err.write(f"child failed: {exc!r}\n")
        finally:
            try:
                view = memoryview(json.dumps([out.getvalue(), err.getvalue()]).encode())
                while view:
                    view = view[os.write(write_fd, view):]
            finally:
                os._exit(code)
    os.close(write_fd)
    data = bytearray()
    status: int | None = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"worm-fs {' '.join(argv[:2])} (as uid {uid}) did not "
                                 f"return within {timeout:.0f} s")
            if select.select([read_fd], [], [], left)[0]:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                data += chunk
        status = os.waitpid(pid, 0)[1]
    finally:
        os.close(read_fd)
        if status is None:  # failed or interrupted: do not leave the child behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    try:
        out, err = json.loads(data or b'["", ""]')
    except ValueError:
        out, err = "", "no readable output from the child"
    return os.waitstatus_to_exitcode(status), out, err


def cli_json(what: str, done: tuple[int, str, str]) -> Any:
    """The JSON a ``worm-fs ... --json`` command printed; BenchError if it failed."""
    code, out, err = done
    if code != 0:
        lines = (err or out).strip().splitlines()
        raise BenchError(f"{what} failed (exit {code}): {lines[-1] if lines else 'no message'}")
    try:
        return json.loads(out)
    except ValueError:
        raise BenchError(f"{what} printed no JSON: {out.strip()[:200]!r}") from None


# ---------------------------------------------------------------------- the benchmark
@dataclass
class Side:
    name: str  # "native" or "worm" (keys in results)
    label: str
    root: Path
    worm: bool
    seq_files: dict[int, str] = field(default_factory=dict)
    read_files: dict[int, list[str]] = field(default_factory=dict)  # large, sealed, by rep
    scratch: list[Path] = field(default_factory=list)  # native dirs removed after a rep


@dataclass
class Config:
    size: int
    big_size: int
    small_files: int
    reps: int
    stat_passes: int
    base_dir: Path
    json: bool
    quick: bool
    large_size: int = DEFAULTS["large_size"]
    conc_files: int = DEFAULTS["conc_files"]
    latency_samples: int = DEFAULTS["latency_samples"]
    phases: frozenset[str] = frozenset(PHASES)

    @property
    def latency_cap(self) -> int:
        """Bytes a worm-fs latency writer writes at most (it stops when the sampling
        ends, usually long before; native writers remove their older files instead)."""
        return max(8 * self.large_size, LAT_WRITE_MIN_CAP)


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.results = Results()
        self.work: Path | None = None
        self.mount: WormMount | None = None
        self.native: Side | None = None
        self.wormside: Side | None = None
        self.data: RandomData | None = None
        self.machine: dict[str, Any] = {}
        self.duration = 0.0
        self.current = "setup"  # the step running, named in failure messages
        self.log_state_dir: Path | None = None  # the store of the latest mount
        self._line_open = False

    # -- progress (stderr) ---------------------------------------------------------
    def say(self, message: str) -> None:
        self._end_line()
        print(f"bench: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[list[str]]:
        """Print ``message ...`` now and what the body appends to the list when done."""
        self._end_line()
        self.current = message
        print(f"bench: {message} ...", end="", file=sys.stderr, flush=True)
        self._line_open = True
        outcome: list[str] = []
        yield outcome
        print(f" {' '.join(outcome) or 'done'}", file=sys.stderr, flush=True)
        self._line_open = False

    def _end_line(self) -> None:
        if self._line_open:
            print(file=sys.stderr, flush=True)
            self._line_open = False

    # -- setup ---------------------------------------------------------------------
    def space_needed(self) -> tuple[int, int]:
        """Bytes needed for the native files and for the worm-fs store, margins included."""
        cfg, phases = self.cfg, self.cfg.phases
        # 1 MiB chunks take one LMDB page extra, 4 KiB chunks two overflow pages + metadata
        big, small = 1 + 4 * KiB / MiB, 12 * KiB
        native = store = 0.0
        if "sequential" in phases:
            native += cfg.reps * cfg.size
            store += cfg.reps * cfg.size * big
        if "rss" in phases:
            store += cfg.big_size * big
        # one repetition of the concurrency phases (natively removed after each one)
        files = large = native_latency = worm_latency = 0
        if "small" in phases:
            native += cfg.reps * cfg.small_files * SMALL_FILE_SIZE
            store += cfg.reps * cfg.small_files * small
            files += len(SMALL_WRITERS) * cfg.conc_files
        if "large" in phases:
            large += sum(LARGE_WRITERS) * cfg.large_size
        elif "reads" in phases:
            large += READERS * cfg.large_size
        if "latency" in phases:
            files += 3 * cfg.latency_samples
            native_latency = LAT_WRITERS * (LAT_NATIVE_KEEP + 1) * cfg.large_size
            worm_latency = LAT_WRITERS * cfg.latency_cap
        native += files * SMALL_FILE_SIZE + large + native_latency
        store += cfg.reps * (files * small + (large + worm_latency) * big)
        if "frag" in phases:
            # the fragmentation stores, one after the other: the second one holds the
            # fill and the --size written after the deletion (if no freed space is reused)
            fill = frag_sizes(FRAG_FILL_FACTOR * cfg.size)
            store += (sum(fill) + cfg.size) * big + len(fill) * small
        if "replica" in phases:
            store += cfg.size * (big + 1.25)  # the primary's store and the replica's cache
        return (int(native + max(256 * MiB, native // 10)),
                int(store + max(256 * MiB, store // 10)))

    def preflight(self) -> None:
        cfg = self.cfg
        if sys.platform != "linux":
            raise BenchError("worm-fs benchmarks need Linux")
        if os.geteuid() != 0:
            raise BenchError("must run as root: dropping the page cache for cold reads needs "
                             "it (sudo scripts/bench)")
        if not os.path.exists("/dev/fuse"):
            raise BenchError("/dev/fuse is missing: load the fuse module or install fuse3")
        if shutil.which("fusermount3") is None:
            raise BenchError("fusermount3 is not installed (apt-get install fuse3)")
        if not cfg.base_dir.is_dir():
            raise BenchError(f"--dir {cfg.base_dir} is not a directory")
        if mount_of(cfg.base_dir)[2].startswith("fuse"):
            raise BenchError(f"--dir {cfg.base_dir} is on a FUSE filesystem; pick a local disk")
        native, store = self.space_needed()
        st = os.statvfs(cfg.base_dir)
        free = st.f_bavail * st.f_frsize
        if free < native + store:
            raise BenchError(
                f"not enough free space in {cfg.base_dir}: need {human_bytes(native + store)} "
                f"(native side {human_bytes(native)} + worm-fs store {human_bytes(store)}, "
                f"10% margin each), have {human_bytes(free)}; use --dir elsewhere or lower "
                "--size/--big-size/--reps"
            )
        drop_caches()  # fails early when the host does not allow it

    def setup(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="worm-fs-bench-", dir=self.cfg.base_dir))
        self.say(f"work dir {self.work}")
        self.machine = machine_info(self.work)
        native_dir = self.work / "native"
        native_dir.mkdir()
        self.native = Side("native", "native", native_dir, worm=False)
        self.wormside = Side("worm", "worm-fs", self.work / "mnt", worm=True)
        with self.step(f"generating {human_bytes(POOL_SIZE)} of random data"):
            self.data = RandomData()

    def start_mount(self, audit_reads: str, state_dir: Path | None = None,
                    mountpoint: Path | None = None, options: tuple[str, ...] = (),
                    what: str = "worm-fs") -> None:
        assert self.work is not None and self.mount is None
        state_dir = state_dir or self.work / "state"
        mountpoint = mountpoint or self.work / "mnt"
        flags = " ".join(("--audit-reads", audit_reads, *options))
        with self.step(f"mounting {what} ({flags})") as out:
            self.mount = WormMount(state_dir, mountpoint, audit_reads, options)
            self.log_state_dir = state_dir
            self.mount.start()
            out.append(f"daemon pid {self.mount.pid}")

    def stop_mount(self) -> None:
        if self.mount is not None:
            for warning in self.mount.stop():
                self.say(f"warning: {warning}")
            self.mount = None

    def daemon_log_tail(self) -> str | None:
        """The last line of the daemon's log, to explain a failure."""
        if self.log_state_dir is None:
            return None
        try:
            lines = (self.log_state_dir / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            return None
        return lines[-1] if lines else None

    def cleanup(self) -> None:
        self._end_line()
        self.stop_mount()
        if self.work is None or not self.work.exists():
            return
        if any(mp == str(self.work) or mp.startswith(f"{self.work}/")
               for _, mp, _ in mounts()):
            self.say(f"warning: something is still mounted below {self.work}; left in place")
            return
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():
            self.say(f"warning: could not remove {self.work}")
        else:
            self.say(f"removed {self.work}")

    # -- the run ---------------------------------------------------------------------
    def sides(self, rep: int) -> list[Side]:
        """A/B order, swapped every repetition (AB, BA, AB, ...) so neither side is
        always first."""
        assert self.native is not None and self.wormside is not None
        pair = [self.native, self.wormside]
        return pair if rep % 2 == 0 else pair[::-1]

    def run(self) -> None:
        cfg = self.cfg
        started = time.monotonic()
        self.preflight()
        self.setup()
        phases = cfg.phases
        rep_phases = [phase for name, phase in REP_PHASES if name in phases]
        if "rss" in phases or rep_phases:
            self.start_mount("handle")
        if "rss" in phases:
            self.measure_peak_rss()  # first, on a fresh daemon: nothing else is mapped yet
        for rep in range(cfg.reps if rep_phases else 0):
            for side in self.sides(rep):
                for phase in rep_phases:
                    try:
                        phase(self, side, rep)
                    except NotMeasured as exc:
                        self.results.notes[exc.key] = exc.reason
                self.remove_scratch(side)
        self.stop_mount()
        if "audit" in phases:
            self.start_mount("each")
            for rep in range(cfg.reps):
                for side in self.sides(rep):
                    self.reads(side, rep, "audit_cold_read", "audit_warm_read")
            self.stop_mount()
        if "frag" in phases:
            try:  # once, on stores of its own, with no other daemon running
                self.phase_fragmentation()
            except NotMeasured as exc:
                self.results.notes[exc.key] = exc.reason
        if "records" in phases:
            self.phase_records()
        if "replication" in phases:
            try:
                self.phase_replication()
            except NotMeasured as exc:
                self.results.notes["upload"] = self.results.notes["write_with_bucket"] = \
                    exc.reason
        if "replica" in phases:
            try:
                self.phase_replica()
            except NotMeasured as exc:
                for key in ("replica_cold_read", "replica_cached_read", "replica_ttfb"):
                    self.results.notes[key] = exc.reason
        self.duration = time.monotonic() - started
        self.machine["load_at_end"] = os.getloadavg()[0]

    def tag(self, side: Side, rep: int) -> str:
        return f"[rep {rep + 1}/{self.cfg.reps} {side.label}]"

    def daemon_pid(self) -> int:
        assert self.mount is not None and self.mount.pid is not None
        return self.mount.pid

    def write_file(self, path: str, size: int) -> None:
        assert self.data is not None
        guard = MountGuard(Path(path).parent, must_be_mount=False)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            left = size
            while left:
                guard.check()
                n = min(BLOCK, left)
                view = self.data.block(n)
                while view:
                    view = view[os.write(fd, view):]
                left -= n
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, path: str, expected: int, block: int = BLOCK) -> float:
        """Read ``path`` front to back in ``block``-byte read() calls; returns MB/s."""
        return self.read_timed(path, expected, block)[1]

    @staticmethod
    def read_timed(path: str | Path, expected: int,
                   block: int = BLOCK) -> tuple[float, float]:
        """Read ``path`` front to back in ``block``-byte read() calls; returns (seconds
        from open to the first byte, MB/s from open to the last byte)."""
        buf = bytearray(block)
        total = 0
        first = None
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                if first is None:
                    first = time.perf_counter() - t0
                total += n
        elapsed = time.perf_counter() - t0
        if total != expected:
            raise BenchError(f"read {total} bytes of {path}, expected {expected}")
        return first or elapsed, expected / elapsed / 1e6

    def phase_sequential(self, side: Side, rep: int) -> None:
        """Sequential write with fsync (and daemon CPU), cold read, warm re-read."""
        size = self.cfg.size
        path = str(side.root / f"seq-r{rep}.bin")
        self.guard(side)  # BenchError if the mount is gone (write_file watches it then)
        drop_caches()  # both sides start from the same, clean cache
        with self.step(f"{self.tag(side, rep)} write {human_bytes(size)} + fsync") as out:
            cpu0 = daemon_cpu_seconds(self.daemon_pid()) if side.worm else 0.0
            t0 = time.perf_counter()
            self.write_file(path, size)
            if side.worm:
                wait_sealed(path, time.monotonic() + SEAL_TIMEOUT)
            elapsed = time.perf_counter() - t0
            mb_s = size / elapsed / 1e6
            self.results.add("seq_write", side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")
            if side.worm:
                cpu = (daemon_cpu_seconds(self.daemon_pid()) - cpu0) / (size / GiB)
                self.results.add("cpu_per_gib", side.name, cpu)
                out.append(f"(daemon CPU {cpu:.2f} s/GiB)")
        side.seq_files[rep] = path
        with self.step(f"{self.tag(side, rep)} {METRIC_BY_KEY['fresh_read'].label}") as out:
            mb_s = self.read_file(path, size, READ_REQUEST)  # no cache drop: see --help
            self.results.add("fresh_read", side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")
        self.reads(side, rep, "cold_read", "warm_read")

    def reads(self, side: Side, rep: int, cold_key: str, warm_key: str) -> None:
        path, size = side.seq_files[rep], self.cfg.size
        drop_caches()
        with self.step(f"{self.tag(side, rep)} {METRIC_BY_KEY[cold_key].label}") as out:
            mb_s = self.read_file(path, size)
            self.results.add(cold_key, side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")
        with self.step(f"{self.tag(side, rep)} {METRIC_BY_KEY[warm_key].label}") as out:
            mb_s = self.read_file(path, size)
            self.results.add(warm_key, side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")

    def phase_small_files(self, side: Side, rep: int) -> None:
        """N new 4 KiB files created, written, closed (and, on worm-fs, sealed); then
        several passes of os.stat over them."""
        assert self.data is not None
        n = self.cfg.small_files
        directory = side.root / f"small-r{rep}"
        directory.mkdir()
        paths = [str(directory / f"f{i:05d}") for i in range(n)]
        contents = [bytes(self.data.block(SMALL_FILE_SIZE)) for _ in range(n)]
        guard = self.guard(side)
        with self.step(f"{self.tag(side, rep)} {n} small files") as out:
            t0 = time.perf_counter()
            write_small_files(paths, contents, fsync=False, check=guard.check)
            if side.worm:  # a close seals asynchronously: count until all report sealed
                deadline = time.monotonic() + SEAL_TIMEOUT
                for path in paths:
                    wait_sealed(path, deadline)
            rate = n / (time.perf_counter() - t0)
            self.results.add("small_files", side.name, rate)
            out.append(f"{rate:.0f} files/s")
        passes = self.cfg.stat_passes
        with self.step(f"{self.tag(side, rep)} os.stat x {passes} passes") as out:
            stat = os.stat
            t0 = time.perf_counter()
            for _ in range(passes):
                for path in paths:
                    stat(path)
            rate = n * passes / (time.perf_counter() - t0)
            self.results.add("stat", side.name, rate)
            out.append(f"{rate:.0f} calls/s")

    # -- concurrency phases ------------------------------------------------------------
    def guard(self, side: Side) -> MountGuard:
        return MountGuard(side.root, must_be_mount=side.worm)

    def scratch_dir(self, side: Side, name: str) -> Path:
        """A new directory for one phase's files; native ones go after the repetition."""
        path = side.root / name
        path.mkdir()
        if not side.worm:
            side.scratch.append(path)
        return path

    def remove_scratch(self, side: Side) -> None:
        """Remove the native files of the concurrency phases now (the disk is shared);
        worm-fs files are write-once and go with the store at the end."""
        for path in side.scratch:
            shutil.rmtree(path, ignore_errors=True)
        side.scratch.clear()

    def store_stats(self) -> dict[str, Any] | None:
        """`worm-fs stats --json` of the benchmark mount, or None (with a warning)."""
        assert self.wormside is not None
        try:
            data = cli_json("worm-fs stats", run_cli(
                ["stats", str(self.wormside.root), "--json"], timeout=120))
        except BenchError as exc:
            self.say(f"warning: {exc}")
            return None
        return data if isinstance(data, dict) else None

    def commit_counters(self) -> dict[str, int] | None:
        """The COMMIT_FIELDS the daemon's stats have (none before the committer rewrite)."""
        data = self.store_stats()
        if data is None:
            return None
        return {name: value for name in COMMIT_FIELDS
                if isinstance(value := data.get(name), int) and not isinstance(value, bool)}

    def wait_none_writing(self, paths: list[str]) -> None:
        """Wait until the store has no file being written (closed files sealed), without
        looking any of ``paths`` up if the stats tell; else through their xattrs."""
        deadline = time.monotonic() + SEAL_TIMEOUT
        while (stats := self.store_stats()) is not None and isinstance(stats.get("writing"),
                                                                         int):
            if stats["writing"] == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{stats['writing']} file(s) still being written "
                                 f"{SEAL_TIMEOUT:.0f} s after close")
            time.sleep(0.1)
        for path in paths:
            wait_sealed(path, deadline)

    def phase_small_writers(self, side: Side, rep: int) -> None:
        """--conc-files 4 KiB files by 1, 4 and 16 writer processes at once."""
        for writers in SMALL_WRITERS:
            self.small_writers(side, rep, writers)

    def small_writers(self, side: Side, rep: int, writers: int) -> None:
        """One small_files_{N}w measurement: each process writes its share of the files
        into a directory of its own. Natively each file is open(O_CREAT)/write/fsync/
        close; on worm-fs open/write/close (a close is durable there), timed to the last
        close and then checked sealed. On worm-fs, commits per closed file come from
        `worm-fs stats` before and after."""
        key = f"small_files_{writers}w"
        total = self.cfg.conc_files
        guard = self.guard(side)
        base = self.scratch_dir(side, f"small-{writers}w-r{rep}")
        dirs = [base / f"w{j:02d}" for j in range(writers)]
        for directory in dirs:
            directory.mkdir()
        counts = split_evenly(total, writers)
        jobs: list[tuple[Job, dict[str, Any]]] = [
            (small_files_job, {"directory": str(d), "count": c, "fsync": not side.worm})
            for d, c in zip(dirs, counts, strict=True)
        ]
        os.sync()  # no dirty data of earlier phases for the fsyncs to wait for
        before = self.commit_counters() if side.worm else None
        how = "open/write/close" if side.worm else "open/write/fsync/close"
        procs = f"{writers} writer process{'es' * (writers > 1)}"
        with self.step(f"{self.tag(side, rep)} {total} small files ({how}), {procs}") as out:
            run = run_workers(key, guard, jobs)
            rate = total / run.elapsed
            self.results.add(key, side.name, rate)
            out.append(f"{rate:.0f} files/s")
            if side.worm:
                deadline = time.monotonic() + SEAL_TIMEOUT
                for directory, count in zip(dirs, counts, strict=True):
                    for i in range(count):
                        wait_sealed(str(directory / f"f{i:05d}"), deadline)
                batching = commit_batching(before, self.commit_counters(), total)
                self.results.details.setdefault("commit_batching", {}).setdefault(
                    key, []).append(batching)
                out.append(f"-- {batching_text(batching)}")

    def phase_large(self, side: Side, rep: int) -> None:
        """4 and 8 processes each writing one --large-size file at once; the 8 files are
        then the ones the reads phase reads."""
        for writers in LARGE_WRITERS:
            paths = self.large_writers(side, rep, writers)
            if len(paths) >= READERS:
                side.read_files[rep] = paths[:READERS]

    def large_writers(self, side: Side, rep: int, writers: int) -> list[str]:
        """One large_{N}w measurement: N processes each write + fsync + close one file
        (on worm-fs timed until sealed, as the sequential write); with 8 writers on
        worm-fs, the daemon's RssAnon is sampled (peak_rss_8w). Returns the files."""
        key, size = f"large_{writers}w", self.cfg.large_size
        guard = self.guard(side)
        base = self.scratch_dir(side, f"large-{writers}w-r{rep}")
        jobs = one_large_file_each(base, writers, size, side.worm)
        sampler = (MemorySampler(self.daemon_pid(), interval=0.02)
                   if side.worm and writers == RSS_WRITERS else None)
        drop_caches()
        cpu0 = daemon_cpu_seconds(self.daemon_pid()) if side.worm else 0.0
        with self.step(f"{self.tag(side, rep)} {writers} processes each writing "
                       f"{human_bytes(size)} + fsync") as out:
            try:
                run = run_workers(key, guard, jobs,
                                  before_start=sampler.start if sampler else None)
            finally:
                if sampler is not None and sampler.ident is not None:
                    sampler.stop()
            total = writers * size
            mb_s = total / run.elapsed / 1e6
            self.results.add(key, side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")
            extra = []
            if side.worm:
                cpu = (daemon_cpu_seconds(self.daemon_pid()) - cpu0) / (total / GiB)
                self.results.details.setdefault("large_cpu_per_gib", {}).setdefault(
                    key, []).append(round(cpu, 3))
                extra.append(f"daemon CPU {cpu:.2f} s/GiB")
            if sampler is not None:
                anon, file_backed = sampler.peak_anon / MiB, sampler.peak_file / MiB
                self.results.add("peak_rss_8w", side.name, anon)
                self.results.details.setdefault("peak_rss_8w", []).append({
                    "peak_rss_anon_mib": round(anon, 1),
                    "peak_rss_file_mib": round(file_backed, 1)})
                extra.append(f"peak RssAnon {anon:.0f} MiB, file-backed {file_backed:.0f} MiB")
            if extra:
                out.append(f"({'; '.join(extra)})")
        return [path for payload in run.payloads for path in payload["paths"]]

    def write_read_files(self, side: Side, rep: int) -> list[str]:
        """READERS sealed --large-size files to read (when the large phase did not run)."""
        size = self.cfg.large_size
        guard = self.guard(side)
        base = self.scratch_dir(side, f"reads-r{rep}")
        jobs = one_large_file_each(base, READERS, size, side.worm)
        with self.step(f"{self.tag(side, rep)} writing {READERS} x {human_bytes(size)} "
                       "to read"):
            run = run_workers("files to read", guard, jobs)
        return [path for payload in run.payloads for path in payload["paths"]]

    def phase_reads(self, side: Side, rep: int) -> None:
        """Cold read of one --large-size sealed file in 128 KiB read()s; then READERS
        processes cold-reading READERS different files at once (1 MiB read()s)."""
        size = self.cfg.large_size
        guard = self.guard(side)
        files = side.read_files.get(rep) or self.write_read_files(side, rep)
        drop_caches()
        with self.step(f"{self.tag(side, rep)} cold read of {human_bytes(size)}, "
                       f"{human_bytes(READ_REQUEST)} read()s") as out:
            mb_s = self.read_file(files[0], size, READ_REQUEST)
            self.results.add("cold_read_128k", side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")
        drop_caches()
        jobs: list[tuple[Job, dict[str, Any]]] = [
            (reader_job, {"path": path, "expected": size, "block": BLOCK}) for path in files
        ]
        with self.step(f"{self.tag(side, rep)} {READERS} processes cold-reading "
                       f"{human_bytes(size)} each") as out:
            run = run_workers("cold_read_8r", guard, jobs)
            mb_s = len(files) * size / run.elapsed / 1e6
            self.results.add("cold_read_8r", side.name, mb_s)
            out.append(f"{mb_s:.1f} MB/s")

    def phase_latency(self, side: Side, rep: int) -> None:
        """p50/p99 of open+close, stat and a 4 KiB pread of sealed files while
        LAT_WRITERS processes write large files.

        3 x --latency-samples small files are written first (by 4 processes) and, on
        worm-fs, left to seal; the caches are dropped; then each sample opens one file,
        stats another and preads a third, none of them looked up before (worm-fs gives
        sealed files long entry and attribute timeouts, so a name seen once would never
        reach the daemon again). The writers write --large-size files (fsync at the end
        of each) until the sampling ends, at most max(4 x --large-size, 512 MiB) each.
        """
        cfg = self.cfg
        n, size = cfg.latency_samples, cfg.large_size
        guard = self.guard(side)
        base = self.scratch_dir(side, f"latency-r{rep}")
        sealed = base / "sealed"
        sealed.mkdir()
        dirs = [sealed / f"w{j}" for j in range(4)]
        for directory in dirs:
            directory.mkdir()
        counts = split_evenly(3 * n, len(dirs))
        paths = [str(d / f"f{i:05d}") for d, c in zip(dirs, counts, strict=True)
                 for i in range(c)]
        random.Random(FRAG_SEED).shuffle(paths)
        with self.step(f"{self.tag(side, rep)} writing {3 * n} small files to look up"):
            run_workers("latency files", guard, [
                (small_files_job, {"directory": str(d), "count": c, "fsync": False})
                for d, c in zip(dirs, counts, strict=True)])
            if side.worm:
                self.wait_none_writing(paths)
        writer_dirs = [base / f"writer{j}" for j in range(LAT_WRITERS)]
        for directory in writer_dirs:
            directory.mkdir()
        cap = LAT_NATIVE_CAP if not side.worm else cfg.latency_cap
        jobs: list[tuple[Job, dict[str, Any]]] = [
            (large_writer_job, {"directory": str(d), "size": size, "files": -(-cap // size),
                                "seal": False, "open_ended": True,
                                "keep": 0 if side.worm else LAT_NATIVE_KEEP})
            for d in writer_dirs
        ]
        jobs.append((latency_job, {"open_paths": paths[0::3], "stat_paths": paths[1::3],
                                   "read_paths": paths[2::3]}))
        measurer, writers = len(jobs) - 1, set(range(LAT_WRITERS))
        drop_caches()
        with self.step(f"{self.tag(side, rep)} open/stat/pread latency while "
                       f"{LAT_WRITERS} processes write") as out:
            run = run_workers("latency_under_write", guard, jobs,
                              finish_when=lambda done: measurer in done or writers <= done)
            got = run.payloads[measurer]
            samples = len(got["open"])
            if not samples:
                raise BenchError("latency_under_write: no sample taken before the writers "
                                 "finished; raise --large-size")
            text = []
            for op in ("open", "stat", "pread"):
                p50, p99 = (percentile(got[op], q) * 1e3 for q in (50, 99))
                self.results.add(f"latency_under_write_{op}_p50", side.name, p50)
                self.results.add(f"latency_under_write_{op}_p99", side.name, p99)
                text.append(f"{op} {p50:.2f}/{p99:.2f}")
            written = sum(payload["bytes"] for payload in run.payloads[:LAT_WRITERS])
            self.results.details.setdefault("latency_under_write", {}).setdefault(
                side.name, []).append({
                    "samples": samples, "seconds": round(run.elapsed, 2),
                    "written_bytes": written,
                    "write_mb_s": round(written / run.elapsed / 1e6, 1)})
            out.append(f"p50/p99 ms: {', '.join(text)} ({samples} samples; the writers "
                       f"wrote {human_bytes(written)} at {written / run.elapsed / 1e6:.0f} "
                       "MB/s)")

    def phase_fragmentation(self) -> None:
        """--size write + fsync on a store after deleting half of it, vs a fresh store.

        Both are new stores of their own, mounted with --allow-other --settle 0 and a
        --runtime-dir other users can reach. (1) A fresh store: time a --size write.
        (2) Another store is filled with FRAG_FILL_FACTOR x --size of files of mixed
        sizes (frag_sizes), written alternately into victims/ and keep/ with similar
        sizes paired, so the deleted files are every other one written and spread over
        all sizes; victims/ is deleted through the real two-person procedure (`worm-fs
        delete request` as uid FRAG_REQUESTER, `worm-fs delete approve` as root); then
        the same --size write is timed. Runs once per run (not per repetition).
        """
        assert self.work is not None
        cfg = self.cfg
        os.chmod(self.work, 0o755)  # mkdtemp made it 0700; the requester must reach the mount
        blocked = unsearchable_dir(self.work)
        if blocked is not None:
            raise NotMeasured("frag_write", f"{blocked} is not searchable by other users, "
                              "needed for the deletion request; use another --dir")
        base = self.work / "frag"
        base.mkdir()
        os.chmod(base, 0o755)

        def options(name: str) -> tuple[str, ...]:
            return ("--allow-other", "--settle", "0", "--runtime-dir", str(base / name))

        fresh_state = base / "fresh-state"
        self.start_mount("handle", fresh_state, base / "fresh-mnt", options("fresh-run"),
                         "a fresh worm-fs store")
        try:
            fresh = self.frag_write(base / "fresh-mnt", "[fragmentation] fresh store:")
        finally:
            self.stop_mount()
        shutil.rmtree(fresh_state, ignore_errors=True)  # its space goes to the next store

        state, mnt = base / "state", base / "mnt"
        self.start_mount("handle", state, mnt, options("run"), "another fresh worm-fs store")
        try:
            details = self.fill_and_delete_half(mnt)
            frag = self.frag_write(mnt, "[fragmentation] after deleting half:")
        finally:
            self.stop_mount()
        self.results.add("frag_write", "fresh", fresh)
        self.results.add("frag_write", "worm", frag)
        self.results.details["frag_write"] = {
            "write_size": cfg.size,
            "fresh_mb_s": round(fresh, 1),
            "after_delete_mb_s": round(frag, 1),
            **details,
        }

    def phase_records(self) -> None:
        """Bytes the log stores per record: on a store of its own, open, pread 4 KiB and
        close one sealed file RECORD_OPENS_PER_FILE x --small-files times (an open and
        a release record each); `worm-fs stats --json` before and after gives the
        stored bytes of those records, `log show --json` their canonical JSON size
        (what every record took before the packed encoding). Once per run."""
        assert self.work is not None
        base = self.work / "records"
        base.mkdir()
        state, mnt = base / "state", base / "mnt"
        opens = RECORD_OPENS_PER_FILE * self.cfg.small_files
        self.start_mount("handle", state, mnt, ("--settle", "0", "--runtime-dir",
                                                 str(base / "run")), "a fresh worm-fs store")
        try:
            path = mnt / "models" / "run-42" / "model.safetensors"
            path.parent.mkdir(parents=True)
            self.write_file(str(path), 64 * KiB)
            wait_sealed(str(path), time.monotonic() + SEAL_TIMEOUT)
            time.sleep(0.2)  # the group commit writes the seal's neighbours
            before = self.audit_usage(state)
            with self.step(f"[records] {opens} x open+pread+close of a sealed file") as out:
                t0 = time.perf_counter()
                for _ in range(opens):
                    fd = os.open(path, os.O_RDONLY)
                    os.pread(fd, 4096, 0)
                    os.close(fd)
                rate = opens / (time.perf_counter() - t0)
                out.append(f"{rate:.0f} opens/s")
            time.sleep(0.5)  # the last releases and the group commit
            after = self.audit_usage(state)
        finally:
            self.stop_mount()
        records = after["audit_records"] - before["audit_records"]
        stored = after["audit_stored_bytes"] - before["audit_stored_bytes"]
        if not records or "audit_stored_bytes" not in before:
            raise BenchError("the daemon counted no audit records")
        code, out, err = run_cli(["log", "show", str(state), "--json",
                                  "--since", str(before["audit_records"])])
        if code != 0:
            raise BenchError(f"worm-fs log show failed: {err.strip()}")
        canonical = 0
        for line in out.splitlines():
            record = json.loads(line)
            record.pop("leaf_hash", None)
            canonical += len(json.dumps(record, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=True))
        self.results.add("audit_bytes_open", "worm", stored / records)
        self.results.add("audit_json_bytes_open", "worm", canonical / records)
        self.results.add("audit_bytes_all", "worm", after["audit_bytes_per_record"])
        self.results.add("audit_open_rate", "worm", rate)
        self.results.details["audit_records"] = {
            "opens": opens, "records": records, "stored_bytes": stored,
            "canonical_bytes": canonical, "store_records": after["audit_records"],
            "store_bytes_per_record": after["audit_bytes_per_record"],
        }
        shutil.rmtree(base, ignore_errors=True)

    def phase_replication(self) -> None:
        """Against the real RGW of scripts/ceph-dev (started if needed), once per run:
        plain S3 PUTs of REPL_FILES files' worth of 1 MiB objects from 8 threads (what
        the uploader uses), then the same bytes written into a store mounted with
        --bucket (write+fsync of each file; then until the upload queue is empty) and
        into one without; then the store written without a bucket is mounted with one
        (it queues everything it holds) and timed until its queue is empty: the upload
        throughput. Fresh random bytes everywhere (nothing deduplicates)."""
        assert self.work is not None
        import concurrent.futures

        client, endpoint, bucket = self.rgw_bucket("upload")
        total = min(self.cfg.size, 256 * MiB)
        files = [os.urandom(REPL_FILE) for _ in range(max(1, total // REPL_FILE))]
        total = sum(map(len, files))
        until = time.time() + 900  # locked briefly: the dev cluster's OSD is small
        with self.step(f"[replication] plain S3 PUTs of {human_bytes(total)} in 1 MiB "
                       "objects, 8 threads") as out:
            import datetime as dt

            def put(item: tuple[int, int]) -> None:
                f, off = item
                client.put_object(Bucket=bucket, Key=f"plain/{f}-{off}",
                                  Body=files[f][off : off + MiB],
                                  ObjectLockMode="COMPLIANCE",
                                  ObjectLockRetainUntilDate=dt.datetime.fromtimestamp(
                                      until, dt.UTC))

            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(put, [(f, off) for f in range(len(files))
                                    for off in range(0, REPL_FILE, MiB)]))
            plain = total / (time.perf_counter() - t0) / 1e6
            out.append(f"{plain:.1f} MB/s")
        self.results.add("upload", "s3_put", plain)
        to_bucket = ("--s3-endpoint", endpoint, "--object-retention", "0.01")
        for tag, extra in (("no_bucket", ()),
                           ("bucket", ("--bucket", f"s3://{bucket}/store", *to_bucket)),
                           ("sync", ("--bucket", f"s3://{bucket}/sync", *to_bucket,
                                     "--replicate", "sync"))):
            base = self.work / f"repl-{tag}"
            base.mkdir()
            state, mnt = base / "state", base / "mnt"
            self.start_mount("handle", state, mnt, ("--settle", "0", "--runtime-dir",
                                                     str(base / "run"), *extra), tag)
            try:
                with self.step(f"[replication] write {human_bytes(total)} as "
                               f"{len(files)} files + fsync, {tag}") as out:
                    t0 = time.perf_counter()
                    for n, data in enumerate(files):
                        with open(mnt / f"f{n}", "wb") as f:
                            f.write(data)
                            os.fsync(f.fileno())
                    wrote = time.perf_counter() - t0
                    out.append(f"{total / wrote / 1e6:.1f} MB/s")
                for key, side in WRITE_SIDES[tag]:
                    self.results.add(key, side, total / wrote / 1e6)
                if tag == "bucket":  # a sync store's close() waited: nothing to drain
                    self.wait_drained(state, total, "[replication] until the upload queue "
                                      "is empty (uploads beside the writes)")
            finally:
                self.stop_mount()
            if extra:
                shutil.rmtree(base, ignore_errors=True)
        base = self.work / "repl-no_bucket"
        state, mnt = base / "state", base / "mnt"
        self.start_mount("handle", state, mnt, (
            "--settle", "0", "--runtime-dir", str(base / "run"), "--bucket",
            f"s3://{bucket}/again", "--s3-endpoint", endpoint, "--object-retention", "0.01"),
            "the same store, now with a bucket")
        try:
            t0 = time.perf_counter()
            status = self.wait_drained(state, total, "[replication] upload of the whole "
                                       "store (queued at mount)")
            upload = status["uploaded_bytes"] / (time.perf_counter() - t0) / 1e6
        finally:
            self.stop_mount()
            shutil.rmtree(base, ignore_errors=True)
        self.results.add("upload", "worm", upload)
        self.results.details["replication"] = {
            "bytes": total, "files": len(files), "plain_put_mb_s": round(plain, 1),
            "upload_mb_s": round(upload, 1), "uploaded": status}

    def rgw_bucket(self, key: str) -> tuple[Any, str, str]:
        """Start scripts/ceph-dev's RGW (if needed), take its credentials into this
        process's environment (the daemons started later inherit them) and create a
        fresh Object Lock bucket; returns (boto3 client, endpoint, bucket name).
        NotMeasured(key) when the RGW cannot be started."""
        import secrets

        ceph = Path(__file__).resolve().parent / "ceph-dev"
        started = subprocess.run([str(ceph), "start"], capture_output=True, text=True,
                                 timeout=600)
        if started.returncode != 0:
            raise NotMeasured(key, f"scripts/ceph-dev start failed: "
                              f"{(started.stderr or started.stdout).strip()[-200:]}")
        for line in subprocess.run([str(ceph), "env"], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            os.environ[name] = value
        import boto3
        from botocore.config import Config

        endpoint = os.environ["AWS_ENDPOINT_URL"]
        client = boto3.client("s3", endpoint_url=endpoint, config=Config(
            s3={"addressing_style": "path"}, max_pool_connections=REPLICA_GETTERS + 4))
        bucket = f"bench-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        return client, endpoint, bucket

    def phase_replica(self) -> None:
        """Against the real RGW of scripts/ceph-dev, once per run, on stores of its own:
        a primary mounted with --bucket (objects unlocked, so the bucket can be removed
        afterwards) writes one --size file and uploads it; its cold read is timed. The
        same bytes are put as one plain object and fetched with REPLICA_GETTERS parallel
        ranged GETs (1 MiB and 8 MiB ranges; the faster is the baseline). The primary is
        stopped and a --replica mount of the bucket reads the file cold (page cache
        dropped, nothing cached: time to first byte, then MB/s to the last byte) and
        again with the page cache dropped (from its chunk cache)."""
        assert self.work is not None
        import concurrent.futures

        from boto3.s3.transfer import TransferConfig

        size = self.cfg.size
        client, endpoint, bucket = self.rgw_bucket("replica_cold_read")
        base = self.work / "replica"
        base.mkdir()
        primary_state, primary_mnt = base / "primary-state", base / "primary"
        url = f"s3://{bucket}/store"
        details: dict[str, Any] = {"bytes": size, "getters": REPLICA_GETTERS}
        try:
            self.start_mount("handle", primary_state, primary_mnt, (
                "--settle", "0", "--runtime-dir", str(base / "primary-run"), "--bucket", url,
                "--s3-endpoint", endpoint, "--object-retention", "0"), "a primary")
            try:
                path = primary_mnt / "model.bin"
                with self.step(f"[replica] write {human_bytes(size)} on the primary") as out:
                    t0 = time.perf_counter()
                    self.write_file(str(path), size)
                    wait_sealed(str(path), time.monotonic() + SEAL_TIMEOUT)
                    out.append(f"{size / (time.perf_counter() - t0) / 1e6:.1f} MB/s")
                self.wait_drained(primary_state, size, "[replica] until the primary's "
                                  "upload queue is empty", key="replica_cold_read",
                                  whole_log=True)
                drop_caches()
                with self.step("[replica] cold read on the primary") as out:
                    primary_cold = self.read_file(str(path), size)
                    out.append(f"{primary_cold:.1f} MB/s")
                self.results.add("replica_cached_read", "primary_cold", primary_cold)
                with self.step("[replica] the same bytes as one plain object"):
                    client.upload_file(str(path), bucket, "plain/model.bin", Config=(
                        TransferConfig(multipart_chunksize=8 * MiB, max_concurrency=8)))
                pubkey = os.getxattr(primary_mnt, "user.worm.pubkey").decode()
            finally:
                self.stop_mount()

            def ranged_get(span: tuple[int, int]) -> int:
                start, end = span
                reply = client.get_object(Bucket=bucket, Key="plain/model.bin",
                                          Range=f"bytes={start}-{end - 1}")
                return len(reply["Body"].read())

            gets: dict[str, float] = {}
            for part in (MiB, 8 * MiB):
                spans = [(off, min(off + part, size)) for off in range(0, size, part)]
                drop_caches()
                with self.step(f"[replica] {REPLICA_GETTERS} parallel ranged S3 GETs of "
                               f"{human_bytes(part)}") as out:
                    t0 = time.perf_counter()
                    with concurrent.futures.ThreadPoolExecutor(REPLICA_GETTERS) as pool:
                        got = sum(pool.map(ranged_get, spans))
                    gets[human_bytes(part)] = got / (time.perf_counter() - t0) / 1e6
                    out.append(f"{gets[human_bytes(part)]:.1f} MB/s")
                if got != size:
                    raise BenchError(f"ranged GETs returned {got} bytes, expected {size}")
            self.results.add("replica_cold_read", "s3_get", max(gets.values()))
            details["s3_get_mb_s"] = {k: round(v, 1) for k, v in gets.items()}

            cache_gib = (size * 5 // 4 + 64 * MiB) / GiB
            replica_mnt = base / "replica"
            self.start_mount("handle", base / "replica-state", replica_mnt, (
                "--replica", url, "--s3-endpoint", endpoint, "--pubkey", pubkey,
                "--cache-size", f"{cache_gib:.3f}", "--poll", "1", "--object-retention", "0",
                "--runtime-dir", str(base / "replica-run")), "a replica")
            try:
                path = replica_mnt / "model.bin"
                drop_caches()
                with self.step("[replica] cold read on the replica") as out:
                    ttfb, mb_s = self.read_timed(path, size)
                    out.append(f"first byte after {ttfb:.2f} s, {mb_s:.1f} MB/s")
                self.results.add("replica_ttfb", "worm", ttfb)
                self.results.add("replica_cold_read", "worm", mb_s)
                drop_caches()
                with self.step("[replica] re-read from the chunk cache") as out:
                    cached = self.read_file(str(path), size)
                    out.append(f"{cached:.1f} MB/s")
                self.results.add("replica_cached_read", "worm", cached)
                code, text, _ = run_cli(["replication", "status", str(replica_mnt), "--json"])
                if code == 0:
                    details["replica_status"] = json.loads(text)
            finally:
                self.stop_mount()
            self.results.details["replica"] = details
        finally:
            remove_bucket(client, bucket)
            shutil.rmtree(base, ignore_errors=True)

    def wait_drained(self, state: Path, total: int, what: str, key: str = "upload",
                     whole_log: bool = False) -> dict[str, Any]:
        """Poll the store's upload queue (what `replication status` prints, read here in
        a read-only LMDB transaction: a CLI process per poll would take a core from the
        uploader and RGW) until it is empty and ``total`` bytes are up (``whole_log``:
        and the bucket's log holds every record the store has, such as the chunk_hashes
        records made after the uploads); NotMeasured(key) after 600 s."""
        from worm_fs.replication.uploader import queue_status
        from worm_fs.store import Store

        store = Store(state, readonly=True)
        try:
            with self.step(what) as out:
                t0 = time.perf_counter()
                deadline = time.monotonic() + 600
                while True:
                    with store.read() as rt:
                        status = queue_status(rt, time.time_ns())
                        records = rt.get_counter("audit_next_seq")
                    if status["pending_objects"] == 0 and status["uploaded_bytes"] >= total \
                            and (not whole_log or status["log_uploaded_size"] >= records):
                        break
                    if time.monotonic() > deadline:
                        raise NotMeasured(key, f"not uploaded in 600 s: {status}")
                    time.sleep(0.05)
                out.append(f"{status['uploaded_bytes'] / (time.perf_counter() - t0) / 1e6:.1f}"
                           f" MB/s ({status['uploaded_objects']} objects)")
        finally:
            store.close()
        return status

    @staticmethod
    def audit_usage(state: Path) -> dict[str, Any]:
        code, out, err = run_cli(["stats", str(state), "--json"])
        if code != 0:
            raise BenchError(f"worm-fs stats failed: {err.strip()}")
        usage = json.loads(out)
        if "audit_stored_bytes" not in usage:
            raise BenchError("this worm-fs counts no stored audit bytes (stats --json)")
        return usage

    def frag_write(self, mnt: Path, tag: str) -> float:
        """MB/s of a --size write + fsync into ``mnt``, timed until the file is sealed."""
        size = self.cfg.size
        path = str(mnt / "write.bin")
        drop_caches()
        with self.step(f"{tag} write {human_bytes(size)} + fsync") as out:
            t0 = time.perf_counter()
            self.write_file(path, size)
            wait_sealed(path, time.monotonic() + SEAL_TIMEOUT)
            mb_s = size / (time.perf_counter() - t0) / 1e6
            out.append(f"{mb_s:.1f} MB/s")
        return mb_s

    def fill_and_delete_half(self, mnt: Path) -> dict[str, Any]:
        """Fill the store mounted at ``mnt``, then delete every other file written."""
        sizes = sorted(frag_sizes(FRAG_FILL_FACTOR * self.cfg.size))
        rng = random.Random(FRAG_SEED + 1)
        pairs = [(sizes[i], sizes[i + 1]) for i in range(0, len(sizes), 2)]
        rng.shuffle(pairs)
        victims, keep = mnt / "victims", mnt / "keep"
        victims.mkdir(mode=0o755)
        keep.mkdir(mode=0o755)
        plan: list[tuple[str, int]] = []  # write order: victim, keeper, victim, ...
        for i, pair in enumerate(pairs):
            victim, keeper = pair if rng.random() < 0.5 else pair[::-1]
            plan.append((str(victims / f"f{2 * i:05d}"), victim))
            plan.append((str(keep / f"f{2 * i + 1:05d}"), keeper))
        total = sum(sizes)
        deleted = sum(size for _, size in plan[::2])
        n_deleted = len(plan) // 2
        with self.step(f"[fragmentation] fill: {len(plan)} files, {human_bytes(total)} "
                       f"({human_bytes(sizes[0])} to {human_bytes(sizes[-1])}), "
                       "each fsynced") as out:
            t0 = time.perf_counter()
            for path, size in plan:
                self.write_file(path, size)
            deadline = time.monotonic() + SEAL_TIMEOUT
            for path, _ in plan:  # the deletion needs them sealed (not open for writing)
                wait_sealed(path, deadline)
            fill_s = time.perf_counter() - t0
            out.append(f"{total / fill_s / 1e6:.1f} MB/s")
        with self.step(f"[fragmentation] delete every other file ({n_deleted} files, "
                       f"{human_bytes(deleted)}): request as uid {FRAG_REQUESTER}, "
                       "approve as root") as out:
            request = cli_json(
                f"worm-fs delete request (as uid {FRAG_REQUESTER})",
                run_cli_as(FRAG_REQUESTER, FRAG_REQUESTER, [
                    "delete", "request", str(victims), "--json",
                    "--reason", "scripts/bench: fragmentation phase"]))
            if not isinstance(request, dict) or not request.get("id"):
                raise BenchError(f"worm-fs delete request printed no request id: {request!r}")
            if request.get("files") != n_deleted:
                raise BenchError(f"the deletion request covers {request.get('files')} "
                                 f"file(s), expected {n_deleted}")
            t0 = time.perf_counter()
            approved = cli_json("worm-fs delete approve (as root)", run_cli([
                "delete", "approve", str(mnt), str(request["id"]), "--json",
                "--reason", "scripts/bench: fragmentation phase"]))
            approve_s = time.perf_counter() - t0
            if not isinstance(approved, dict) or approved.get("state") != "approved":
                raise BenchError(f"worm-fs delete approve did not approve: {approved!r}")
            freed = (approved.get("extra") or {}).get("bytes_freed_actual")
            if os.path.lexists(victims):
                self.say(f"warning: {victims} is still visible after the approval")
            out.append(f"approved in {approve_s:.2f} s"
                       + (f", freed {human_bytes(freed)}" if isinstance(freed, int) else ""))
        return {
            "fill_files": len(plan),
            "fill_bytes": total,
            "fill_min_file": sizes[0],
            "fill_max_file": sizes[-1],
            "fill_mb_s": round(total / fill_s / 1e6, 1),
            "deleted_files": n_deleted,
            "deleted_bytes": deleted,
            "bytes_freed_actual": freed,
            "approve_s": round(approve_s, 2),
            "requester_uid": FRAG_REQUESTER,
        }

    def measure_peak_rss(self) -> None:
        """Daemon VmHWM while writing one --big-size file (reset through clear_refs)."""
        assert self.wormside is not None
        pid, size = self.daemon_pid(), self.cfg.big_size
        path = str(self.wormside.root / "big.bin")
        drop_caches()
        with self.step(f"[worm-fs] daemon peak RSS writing {human_bytes(size)}") as out:
            reset_peak_rss(pid)
            sampler = MemorySampler(pid)
            sampler.start()
            try:
                t0 = time.perf_counter()
                self.write_file(path, size)
                wait_sealed(path, time.monotonic() + SEAL_TIMEOUT)
                elapsed = time.perf_counter() - t0
            finally:
                sampler.stop()
            hwm = memory_status(pid)["VmHWM"] / MiB
            self.results.add("peak_rss", "worm", hwm)
            self.results.details["peak_rss"] = {
                "vm_hwm_mib": round(hwm, 1),
                "sampled_peak_rss_anon_mib": round(sampler.peak_anon / MiB, 1),
                "sampled_peak_rss_file_mib": round(sampler.peak_file / MiB, 1),
                "big_write_mb_s": round(size / elapsed / 1e6, 1),
            }
            out.append(f"{hwm:.1f} MiB (sampled peaks: anon {sampler.peak_anon / MiB:.0f} "
                       f"MiB, file-backed {sampler.peak_file / MiB:.0f} MiB; wrote at "
                       f"{size / elapsed / 1e6:.1f} MB/s)")

    # -- report ----------------------------------------------------------------------
    def small_files_scaling(self) -> dict[str, Any] | None:
        """Whether 4 worm-fs writer processes write more small files/s than 1 does."""
        got = {n: self.results.samples.get(f"small_files_{n}w", {}).get("worm")
               for n in (1, 4)}
        if not got[1] or not got[4]:
            return None
        one, four = statistics.median(got[1]), statistics.median(got[4])
        return {"worm_1w_files_s": round(one, 1), "worm_4w_files_s": round(four, 1),
                "worm_4w_over_1w": round(four / one, 3), "worm_4w_gt_1w": four > one}

    def report(self) -> dict[str, Any]:
        cfg = self.cfg
        rows = self.results.rows(cfg.phases)
        details = dict(self.results.details)
        if (scaling := self.small_files_scaling()) is not None:
            details["small_files_scaling"] = scaling
        return {
            "machine": self.machine,
            "config": {
                "phases": [name for name in PHASES if name in cfg.phases],
                "size": cfg.size, "big_size": cfg.big_size, "small_files": cfg.small_files,
                "small_file_size": SMALL_FILE_SIZE, "reps": cfg.reps,
                "stat_passes": cfg.stat_passes, "block_size": BLOCK, "quick": cfg.quick,
                "large_size": cfg.large_size, "conc_files": cfg.conc_files,
                "latency_samples": cfg.latency_samples, "latency_write_cap": cfg.latency_cap,
                "small_writers": list(SMALL_WRITERS), "large_writers": list(LARGE_WRITERS),
                "readers": READERS, "read_request": READ_REQUEST,
                "latency_writers": LAT_WRITERS, "processes": "forked, one per writer/reader",
                "frag_fill_size": FRAG_FILL_FACTOR * cfg.size,
                "order": "A/B alternating per repetition (native,worm / worm,native / ...)",
                "statistic": "median over repetitions; ratio = worm-fs / native (frag_write: "
                             "after deleting half / fresh store, measured once per run)",
                "mb": "1 MB = 10^6 bytes",
            },
            "metrics": rows,
            "details": details,
            "all_targets_met": all(r["met"] is not False for r in rows),
            "duration_s": round(self.duration, 1),
        }


#: What one repetition runs on each side, in order, with the --only phase each belongs
#: to. A new measurement is one more method here (and its Metric row above); raise
#: NotMeasured to show "n/a (reason)". (rss, audit, frag and records run once per run,
#: from Bench.run; frag and records on stores of their own.)
REP_PHASES: tuple[tuple[str, Callable[[Bench, Side, int], None]], ...] = (
    ("sequential", Bench.phase_sequential),
    ("small", Bench.phase_small_files),
    ("small", Bench.phase_small_writers),
    ("large", Bench.phase_large),
    ("reads", Bench.phase_reads),
    ("latency", Bench.phase_latency),
)


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _median_field(items: list[dict[str, Any]], name: str) -> float | None:
    values = [item[name] for item in items if item.get(name) is not None]
    return statistics.median(values) if values else None


def concurrency_text(details: dict[str, Any]) -> list[str]:
    """The report's lines about the concurrency phases (beyond the table)."""
    lines: list[str] = []
    scaling = details.get("small_files_scaling")
    if scaling:
        lines += ["", f"small files on worm-fs: 4 writer processes "
                  f"{scaling['worm_4w_files_s']:,.0f} files/s vs 1 writer "
                  f"{scaling['worm_1w_files_s']:,.0f} files/s: 4 > 1 "
                  f"{'yes' if scaling['worm_4w_gt_1w'] else 'NO'} "
                  f"({scaling['worm_4w_over_1w']:.2f}x)"]
    batching = details.get("commit_batching")
    if batching:
        lines += ["", "commit batching on worm-fs (`worm-fs stats` before/after each phase, "
                  "medians):"]
        for key, items in batching.items():
            median = {name: _median_field(items, name) for name in
                      ("commits_per_file", "flushes_per_commit", "changes_per_commit",
                       "records_per_commit")}
            lines.append(f"  {METRIC_BY_KEY[key].label}: {batching_text(median)}")
    rss = details.get("peak_rss_8w")
    if rss:
        lines += ["", f"daemon RSS, {RSS_WRITERS} large writers: peak RssAnon "
                  f"{_median_field(rss, 'peak_rss_anon_mib')} MiB, file-backed (mapped store) "
                  f"{_median_field(rss, 'peak_rss_file_mib')} MiB (medians of sampled peaks)"]
    cpu = details.get("large_cpu_per_gib")
    if cpu:
        lines.append("daemon CPU per GiB written by the large writers: " + ", ".join(
            f"{key.removeprefix('large_')} {statistics.median(v):.2f} s"
            for key, v in cpu.items()))
    latency = details.get("latency_under_write")
    if latency:
        lines += ["", "latency under write: " + "; ".join(
            f"{'worm-fs' if side == 'worm' else side} {_median_field(v, 'samples'):.0f} samples "
            f"while {LAT_WRITERS} writers wrote {_median_field(v, 'write_mb_s'):,.0f} MB/s"
            for side, v in latency.items())]
    return lines


def render_text(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        "worm-fs benchmark",
        f"  cpu:        {m['cpu']} ({m['cores']} cores)",
        f"  ram:        {human_bytes(m['ram_bytes'])}",
        f"  kernel:     {m['kernel']}",
        f"  work dir:   {m['work_dir']} on {m['device']} ({m['filesystem']}, "
        f"mounted at {m['device_mountpoint']})",
        f"  python:     {m['python']}; worm-fs {m['worm_fs_version']}",
        f"  load:       1-min load average {m['load_at_start']:.2f} at start, "
        f"{m.get('load_at_end', float('nan')):.2f} at end (other work skews results)",
        f"  run:        write {human_bytes(c['size'])} in {human_bytes(c['block_size'])} "
        f"blocks; big file {human_bytes(c['big_size'])}; {c['small_files']} x "
        f"{human_bytes(c['small_file_size'])} files; {c['stat_passes']} stat passes; "
        f"{c['reps']} rep(s), A/B alternating{' (--quick)' if c['quick'] else ''}",
        f"  processes:  {c['conc_files']} small files per writer count; "
        f"{human_bytes(c['large_size'])} per large writer/reader; "
        f"{c['latency_samples']} latency samples",
        f"  phases:     {', '.join(c['phases'])}",
        f"  reporting:  medians; ratio = worm-fs / native (fragmentation: / fresh store); "
        f"1 MB = 10^6 bytes; took {report['duration_s']:.0f} s",
        "",
    ]
    header = ("metric", "native", "worm-fs", "ratio", "target", "result")
    table = [header]
    for r in report["metrics"]:
        if r["status"] == "not run":
            continue
        digits = METRIC_BY_KEY[r["key"]].digits
        table.append((
            f"{r['metric']} ({r['unit']})",
            fmt(r["native"], digits) if METRIC_BY_KEY[r["key"]].native else "-",
            fmt(r["worm"], digits),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"] or "-",
            r["status"],
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        cells = [row[0].ljust(widths[0])]
        cells += [row[j].rjust(widths[j]) for j in (1, 2, 3)]
        cells += [row[4].ljust(widths[4]), row[5]]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    rss = report["details"].get("peak_rss")
    if rss:
        lines.append("")
        lines.append(f"peak RSS: VmHWM {rss['vm_hwm_mib']} MiB; sampled peaks: anonymous "
                     f"{rss['sampled_peak_rss_anon_mib']} MiB, file-backed (mapped store) "
                     f"{rss['sampled_peak_rss_file_mib']} MiB; the {human_bytes(c['big_size'])}"
                     f" file was written at {rss['big_write_mb_s']} MB/s")
    lines += concurrency_text(report["details"])
    frag = report["details"].get("frag_write")
    if frag:
        lines.append("")
        lines.append(
            f"fragmentation: a {human_bytes(frag['write_size'])} write + fsync ran at "
            f"{frag['fresh_mb_s']} MB/s on a fresh store and at {frag['after_delete_mb_s']} "
            f"MB/s on a store filled with {frag['fill_files']} files "
            f"({human_bytes(frag['fill_bytes'])}, {human_bytes(frag['fill_min_file'])} to "
            f"{human_bytes(frag['fill_max_file'])}) after deleting every other one "
            f"({frag['deleted_files']} files, {human_bytes(frag['deleted_bytes'])}; requested "
            f"by uid {frag['requester_uid']}, approved by root in {frag['approve_s']} s"
            + (f", freeing {human_bytes(frag['bytes_freed_actual'])}"
               if isinstance(frag["bytes_freed_actual"], int) else "") + ")")
    met = sum(1 for r in report["metrics"] if r["met"] is True)
    missed = [r["metric"] for r in report["metrics"] if r["met"] is False]
    lines.append("")
    lines.append(f"targets: {met} met, {len(missed)} missed"
                 + (f" ({'; '.join(missed)})" if missed else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
DESCRIPTION = """\
Measure worm-fs against a native directory on the same disk, in one run.

A work directory is created under --dir (default /var/tmp) holding a native directory,
a fresh worm-fs store and its mountpoint. Both sides get the same operations, in A/B
order alternating every repetition (native first, then worm-fs first, ...), and the
report gives the median of each metric over --reps repetitions:

  1. sequential write + fsync: --size bytes written in 1 MiB blocks from a
     pregenerated random buffer, os.fsync, close -> MB/s. On worm-fs the time runs
     until the file reports sealed (user.worm.state), since a close seals it.
     Then it is read once at once in 128 KiB read()s, with no cache drop (read right
     after the write:
     native reads its page cache; worm-fs writes around the mount's page cache, so
     the daemon serves the read, from the store's pages still in the page cache).
  2. cold sequential read of that file after `sync; echo 3 > drop_caches` -> MB/s.
  3. warm re-read: the same file again right away, no cache drop -> MB/s.
  4. small files: --small-files new 4 KiB files created, written and closed -> files/s
     (on worm-fs, counted until every one of them reports sealed).
  5. os.stat calls per second over those files, --stat-passes passes.
  6. daemon CPU seconds per GiB written: utime+stime of the daemon (its pid is the
     xattr user.worm.pid on the mount root) over step 1, divided by GiB.
  7. daemon peak RSS (VmHWM, reset via /proc/PID/clear_refs) while writing one
     --big-size file, once per run and first, on the freshly mounted daemon (later
     reads map store pages that would count) -> MiB. No native counterpart; the
     report also shows sampled anonymous vs file-backed (mapped store) RSS.
  8. steps 2 and 3 again on a separate mount of the same store started with
     --audit-reads each (one audit record per read call), on the files of step 1.
  9. write after deleting half (fragmentation), once per run on stores of its own:
     a --size write + fsync (until sealed) on a fresh store, and on a second fresh
     store filled with 2 x --size of files (a quarter 4 KiB-1 MiB, the rest 1-8 MiB,
     fixed-seed sizes) after every other file written was deleted through the
     two-person procedure (`worm-fs delete request` as uid 1001, `worm-fs delete
     approve` as root) -> MB/s; ratio = after deletion / fresh store.

Concurrency phases (each writer or reader is a forked process of its own; both sides get
the same number; all start together after a barrier, and the time runs from the first
start to the last end):

 10. small files by 1, 4 and 16 writer processes, each in its own subdirectory:
     --conc-files 4 KiB files in all -> total files/s. Natively each is
     open(O_CREAT|O_WRONLY)/write/fsync/close; on worm-fs open/write/close (a close is
     durable there), timed to the last close, then checked sealed. On worm-fs,
     `worm-fs stats --json` before and after each gives commits per closed file and
     flushes, state changes and audit records per commit (n/a if the daemon has no
     such counters).
 11. large files: 4 and 8 processes each writing one --large-size file in 1 MiB writes,
     fsync at the end (on worm-fs timed until sealed) -> total MB/s; during the 8, the
     daemon's RssAnon (/proc/PID/status) is sampled every 20 ms -> peak MiB.
 12. cold reads, caches dropped before each: one of the files of step 11 with 128 KiB
     read() calls, then 8 processes reading the 8 files of step 11 at once (1 MiB
     read()s) -> MB/s. Without the large phase, the 8 files are written first.
 13. latency under write: while 2 processes write --large-size files (fsync at the end
     of each, until the sampling ends; on worm-fs at most max(8 x --large-size, 1 GiB)
     each, natively only the last 2 files kept),
     another takes --latency-samples samples of os.open(O_RDONLY)+close, os.stat and a
     4 KiB os.pread (open not timed), each on a different sealed small file not looked
     up before (3 x samples of them written first, caches dropped) -> p50, p99 in ms.
 14. audit record size, once per run on a store of its own: 10 x --small-files
     open + 4 KiB pread + close of one sealed file -> stored bytes per record of that
     loop (LMDB values, from `worm-fs stats --json` before and after; the 8-byte keys
     and LMDB's page overhead not included), their canonical JSON size, stored bytes
     per record over the whole store, and opens/s.

Object-store phases, once per run, against the Ceph RGW of scripts/ceph-dev (started if
it is not running; each on a fresh Object Lock bucket, removed at the end):

 15. replication: plain S3 PUTs of up to 256 MiB in 1 MiB objects from 8 threads, the
     same bytes written into a store mounted with --bucket, into one mounted with
     --bucket --replicate sync (each close() waits for the bucket) and into one without,
     then the last mounted with --bucket and timed until its upload queue is empty -> MB/s.
 16. replica: one --size file written on a primary with --bucket and uploaded; the
     primary's cold read; ranged S3 GETs of the same bytes by 16 threads in 1 MiB and
     in 8 MiB ranges (the faster is the baseline); then the primary stopped and the
     bucket mounted with --replica on an empty cache: time to first byte, cold
     sequential read (1 MiB read()s) and, after drop_caches, the cached re-read -> MB/s.

--only picks phases (comma-separated): rss (7), sequential (1-3, 6), small (4, 5, 10),
large (11), reads (12), latency (13), audit (8; runs sequential too), frag (9),
records (14), replication (15), replica (16).
Native files of the concurrency phases are removed after each repetition.

worm-fs files are write-once: a file is sealed (read-only) when its writer closes it
and can never be written again, so every repetition writes NEW files (seq-rN.bin,
small-rN/) and the re-reads read existing sealed files. The written data never
repeats (a counter every 4 KiB), so worm-fs's chunk dedup cannot flatter it.
"""

EPILOG = """\
targets (ratio = worm-fs / native):
  seq write >= 0.5x; cold read >= 1.0x; warm re-read >= 0.75x;
  audit-each cold read >= 0.7x; small files >= 3000 files/s; stat >= 15000 calls/s;
  daemon CPU <= 1.2 s/GiB; daemon peak RSS <= 200 MiB;
  write after deleting half >= 0.8x of a fresh store's;
  small files by 1 / 4 / 16 writer processes >= 0.35x / 0.5x / 0.5x;
  large files by 4 writer processes >= 0.6x; daemon peak RssAnon with 8 <= 300 MiB;
  cold read in 128 KiB read()s >= 0.7x; 8 cold readers >= 0.5x;
  p99 of open+close and of stat with 2 writers running <= 5 ms;
  replica cold read >= 0.7x of ranged S3 GETs; replica cached re-read >= 0.8x of a
  primary's cold read (time to first byte is reported, no target).

requirements: root (to drop the page cache), /dev/fuse and fusermount3, and free space
in --dir for both sides: about reps x --size + the small files natively, plus
reps x --size + --big-size in the store and 3 x --size for the fragmentation stores;
for the concurrency phases 18 x --large-size natively, and reps x (12 x --large-size +
2 x the latency writers' cap) in the store; plus a margin (phases left out by --only count
nothing); the run refuses to start without it. For the deletion request, uid 1001
must be able to reach the work directory (every directory above --dir searchable by
others; otherwise that metric is n/a). Everything it creates is removed at the end and
everything it mounted is unmounted, also after a failure or Ctrl-C (fusermount3 -u -z
as a last resort).

progress goes to stderr; the report (or --json) to stdout.
exit status: 0 measured (whether or not the targets were met); 1 could not measure
(one-line reason on stderr: not root, mount failed, not enough space, ...);
2 bad arguments; 130 interrupted.

examples:
  scripts/bench                     full run (about 40 GiB written; about 10 minutes)
  scripts/bench --quick             smoke run with small sizes (well under 3 minutes)
  scripts/bench --quick --only small,latency
                                    only those phases
  scripts/bench --reps 5 --json     more repetitions, machine-readable output
  scripts/bench --dir /mnt/nvme     benchmark another disk
"""


def build_parser() -> argparse.ArgumentParser:
    phases = "".join(f"  {name:<11} {text}\n" for name, text in PHASES.items())
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=DESCRIPTION,
        epilog=f"phases (--only, comma-separated; default all, in this order):\n{phases}\n"
        + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=positive_int, metavar="N",
                        help="repetitions per side; medians are reported (default 3)")
    parser.add_argument("--size", type=parse_size, metavar="SIZE",
                        help="sequential file size, e.g. 512M, 1G (default 1 GiB)")
    parser.add_argument("--big-size", type=parse_size, metavar="SIZE",
                        help="file written while measuring the daemon's peak RSS "
                        "(default 4 GiB)")
    parser.add_argument("--small-files", type=positive_int, metavar="N",
                        help="4 KiB files per repetition and side (default 2000)")
    parser.add_argument("--stat-passes", type=positive_int, default=5, metavar="N",
                        help="os.stat passes over the small files (default 5)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), metavar="DIR",
                        help="where the temporary work directory goes; it decides the "
                        "disk measured (default /var/tmp)")
    parser.add_argument("--large-size", type=parse_size, metavar="SIZE",
                        help="file size per large-file writer/reader process "
                        "(default 256 MiB)")
    parser.add_argument("--conc-files", type=positive_int, metavar="N",
                        help="4 KiB files per small-file concurrency phase, split over its "
                        "writer processes (default 2000)")
    parser.add_argument("--latency-samples", type=positive_int, metavar="N",
                        help="open/stat/pread samples in the latency phase (default 300)")
    parser.add_argument("--only", type=parse_phases, metavar="PHASES",
                        help="comma-separated phases to run (default all): "
                        + ", ".join(PHASES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes: 64 MiB file, 256 MiB big file, 200 small "
                        "files, 32 MiB per large writer, 400 files per concurrency phase, "
                        "100 latency samples, 1 rep (explicit options still win)")
    parser.add_argument("--json", action="store_true",
                        help="print the machine description and results as one JSON object")
    return parser


def parse_phases(text: str) -> frozenset[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {', '.join(unknown) or repr(text)}; pick from "
            + ", ".join(PHASES))
    return frozenset(names)


def config_from(args: argparse.Namespace) -> Config:
    base = QUICK if args.quick else DEFAULTS
    pick = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    phases = args.only or frozenset(PHASES)
    if "audit" in phases and "sequential" not in phases:
        print("bench: --only audit: running sequential too (audit re-reads its files)",
              file=sys.stderr)
        phases |= {"sequential"}
    return Config(
        size=pick["size"], big_size=pick["big_size"], small_files=pick["small_files"],
        reps=pick["reps"], stat_passes=args.stat_passes, base_dir=args.dir.absolute(),
        json=args.json, quick=args.quick, large_size=pick["large_size"],
        conc_files=pick["conc_files"], latency_samples=pick["latency_samples"],
        phases=phases,
    )


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bench = Bench(config_from(args))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    failure: str | None = None
    code = 0
    try:
        bench.run()
    except BenchError as exc:
        failure, code = str(exc), 1
    except (KeyboardInterrupt, Interrupted) as exc:
        failure, code = f"interrupted ({str(exc) or 'SIGINT'})", 130
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        failure, code = f"{bench.current}: {exc.strerror or exc}{where}", 1
    except Exception as exc:  # a bug: show where, then the one-line reason
        bench._end_line()
        traceback.print_exc()
        failure, code = f"internal error: {type(exc).__name__}: {exc}", 1
    finally:
        # A second Ctrl-C must not leave a mount behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if failure is not None and code != 130 and (tail := bench.daemon_log_tail()):
            bench.say(f"last line of the worm-fs daemon log: {tail}")
        bench.cleanup()
    if failure is not None:
        print(f"bench: could not measure: {failure}", file=sys.stderr)
        return code
    report = bench.report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
