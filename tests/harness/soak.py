"""Soak: create, read back and verify files for a long time, watching the daemon.

Every ``--interval`` seconds it prints the daemon's resident memory and open file
descriptors next to the work done, so leaks show as a trend. It fails (exit 1) on any
content mismatch, and when open descriptors grew by more than ``--fd-slack`` or memory
by more than ``--rss-slack-mib`` between the first and last report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORM_FS = [sys.executable, "-m", "worm_fs"]


def daemon_stats(pid: int) -> tuple[float, float, int]:
    """(anonymous MiB, file-backed MiB, open fds) of the daemon.

    File-backed memory is the store's LMDB map: pages the kernel can drop at any time,
    so leaks are judged on anonymous memory.
    """
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    return (fields.get("RssAnon", 0) / 1024, fields.get("RssFile", 0) / 1024,
            len(os.listdir(f"/proc/{pid}/fd")))


def run(duration: float, interval: float, workdir: Path, seed: int) -> dict:
    rng = random.Random(seed)
    state, mnt = workdir / "state", workdir / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "daemon.log", "ab")
    proc = subprocess.Popen([*WORM_FS, "mount", str(state), str(mnt), "--foreground",
                             "--settle", "0"], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("soak: the daemon did not come up")
        time.sleep(0.05)
    samples: list[dict] = []
    problems: list[str] = []
    written = read = 0
    bytes_written = 0
    started = time.monotonic()
    next_report = started
    try:
        while time.monotonic() - started < duration:
            size = rng.choice([0, 1, 4096, 65_536, 1_000_000, 4_000_000])
            data = rng.randbytes(size)
            name = f"f{written:08d}"
            (mnt / name).write_bytes(data)
            written += 1
            bytes_written += size
            pick = f"f{rng.randrange(written):08d}"
            got = (mnt / pick).read_bytes()
            read += 1
            expected = os.getxattr(mnt / pick, "user.worm.sha256").decode() \
                if os.getxattr(mnt / pick, "user.worm.state") == b"sealed" else None
            if expected and hashlib.sha256(got).hexdigest() != expected:
                problems.append(f"{pick}: content does not match its sealed sha256")
            if time.monotonic() >= next_report:
                anon, mapped, fds = daemon_stats(proc.pid)
                sample = {"t": round(time.monotonic() - started, 1), "files": written,
                          "reads": read, "mib_written": round(bytes_written / 2**20),
                          "rss_mib": round(anon, 1), "mapped_store_mib": round(mapped, 1),
                          "fds": fds}
                samples.append(sample)
                print(json.dumps(sample), file=sys.stderr, flush=True)
                next_report += interval
        for command in (["verify", str(mnt)], ["log", "verify", str(mnt)]):
            result = subprocess.run([*WORM_FS, *command], capture_output=True, text=True)
            if result.returncode != 0:
                problems.append(f"worm-fs {command[0]} failed: {result.stdout[-300:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        log.close()
    return {"samples": samples, "problems": problems, "files": written, "reads": read}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--interval", type=float, default=10, help="report every N seconds")
    parser.add_argument("--fd-slack", type=int, default=10)
    parser.add_argument("--rss-slack-mib", type=float, default=64,
                        help="allowed growth of anonymous memory (default 64 MiB)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="work directory (default: new under /var/tmp)")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="worm-fs-soak-", dir="/var/tmp"))
    try:
        report = run(args.duration, args.interval, workdir, args.seed)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    samples, problems = report["samples"], list(report["problems"])
    if len(samples) >= 2:
        first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
        if last["fds"] - first["fds"] > args.fd_slack:
            problems.append(f"open fds grew from {first['fds']} to {last['fds']}")
        if last["rss_mib"] - first["rss_mib"] > args.rss_slack_mib:
            problems.append(f"anonymous memory grew from {first['rss_mib']} to "
                            f"{last['rss_mib']} MiB")
    print(json.dumps({"files": report["files"], "reads": report["reads"],
                      "first": samples[0] if samples else None,
                      "last": samples[-1] if samples else None,
                      "max_rss_mib": max((s["rss_mib"] for s in samples), default=0),
                      "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
