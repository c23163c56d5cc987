"""Kill -9 loop: concurrent writers, a daemon killed at a random moment, remount, check.

Each writer process writes files (four writers of mixed sizes, 10 KB to 6 MB, and four
of small files, so that the kill often lands while a group commit holds several closes)
whose content is a pure function of the file name, and appends a name to its
acknowledgement log only after ``close()`` returned 0. After each crash and remount the
checker requires:

* every acknowledged file exists, is sealed and has exactly its intended content;
* every file in state ``sealed`` has exactly its intended content (acknowledged or not);
* no file is left ``writing``; unacknowledged files may be sealed or quarantined;
* ``worm-fs verify`` and ``worm-fs log verify`` pass;
* the remount takes at most ``max_remount_s`` seconds.

Used by ``tests/test_crash.py`` (a few iterations) and ``scripts/crashtest`` (many).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

WRITERS = 4
#: Writers of small files, so that many closes share each group commit when it is killed.
SMALL_WRITERS = 4
WORM_FS = [sys.executable, "-m", "worm_fs"]
SIZES = [10_000, 100_000, 700_000, 1_048_576, 3_000_000, 6_000_000]
SMALL_SIZES = [1, 4096, 10_000]


def content(name: str) -> bytes:
    """The intended bytes of a file, derived from its name (writer-seq-size)."""
    size = int(name.rsplit("-", 1)[1])
    seed = hashlib.sha256(name.encode()).digest()
    rng = random.Random(seed)
    return rng.randbytes(size)


def writer_main(mnt: str, wid: int, ack_path: str, start: int) -> None:
    """Write files until the mount goes away; log each acknowledged one."""
    rng = random.Random(f"{wid}-{start}")
    with open(ack_path, "a") as ack:
        seq = start
        while True:
            size = rng.choice(SMALL_SIZES if wid >= WRITERS else SIZES)
            size += rng.randrange(0, 5000)
            name = f"w{wid}-{seq}-{size}"
            data = content(name)
            try:
                with open(os.path.join(mnt, name), "wb") as f:
                    for off in range(0, len(data), 256 * 1024):
                        f.write(data[off:off + 256 * 1024])
            except OSError as exc:
                with open(ack_path + ".errors", "a") as log:  # for diagnosis
                    log.write(f"{name} errno={exc.errno} {exc}\n")
                return  # the daemon is gone
            ack.write(name + "\n")
            ack.flush()
            os.fsync(ack.fileno())
            seq += 1


@dataclass
class Report:
    iterations: int = 0
    acknowledged: int = 0
    sealed_unacknowledged: int = 0
    quarantined: int = 0
    remount_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: From ``worm-fs stats`` at the end: synced commits and file flushes they held.
    commits: int = 0
    commit_flushes: int = 0
    #: Commits that held the closes of two or more files.
    commits_shared: int = 0


def _mount(state: Path, mnt: Path, log) -> subprocess.Popen:
    proc = subprocess.Popen([*WORM_FS, "mount", str(state), str(mnt), "--foreground",
                             "--settle", "0"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the daemon did not come up")
        time.sleep(0.01)
    return proc


def _unmount_dead(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def check(mnt: Path, state: Path, acked: set[str], report: Report) -> None:
    names = set(os.listdir(mnt))
    report.quarantined = report.sealed_unacknowledged = 0
    for name in sorted(acked - names):
        report.problems.append(f"acknowledged file {name} is missing")
    for name in sorted(names):
        path = mnt / name
        file_state = os.getxattr(path, "user.worm.state").decode()
        if file_state == "writing":
            report.problems.append(f"{name} is still 'writing' after recovery")
        elif file_state == "quarantined":
            report.quarantined += 1
            if name in acked:
                report.problems.append(f"acknowledged file {name} was quarantined")
        elif file_state == "sealed":
            data = path.read_bytes()
            want = content(name)
            if data != want:
                pairs = enumerate(zip(data, want, strict=False))
                first = next((i for i, (a, b) in pairs if a != b), min(len(data), len(want)))
                report.problems.append(
                    f"sealed file {name} differs from what was written ({len(data)} bytes, "
                    f"{len(want)} intended, first difference at {first}, "
                    f"{'acknowledged' if name in acked else 'not acknowledged'})")
            elif os.getxattr(path, "user.worm.sha256").decode() != hashlib.sha256(data).hexdigest():
                report.problems.append(f"sealed file {name} has a wrong sha256 xattr")
            if name not in acked:
                report.sealed_unacknowledged += 1
    stats = subprocess.run([*WORM_FS, "stats", "--json", str(mnt)], capture_output=True,
                           text=True)
    if stats.returncode == 0:
        counts = json.loads(stats.stdout)
        report.commits, report.commit_flushes = counts["commits"], counts["commit_flushes"]
        report.commits_shared = counts["commits_shared"]
    else:
        report.problems.append(f"worm-fs stats failed: {stats.stderr.strip()}")
    for command in (["verify", str(mnt)], ["log", "verify", str(mnt)]):
        result = subprocess.run([*WORM_FS, *command], capture_output=True, text=True)
        if result.returncode != 0:
            report.problems.append(f"worm-fs {' '.join(command[:-1])} failed: "
                                   f"{result.stdout.strip()[-500:]} {result.stderr.strip()}")


def run(iterations: int, workdir: Path, *, seed: int = 0, max_remount_s: float = 5.0,
        min_run_s: float = 0.3, max_run_s: float = 2.0, progress=None) -> Report:
    rng = random.Random(seed)
    state, mnt, acks = workdir / "state", workdir / "mnt", workdir / "acks"
    mnt.mkdir(parents=True, exist_ok=True)
    acks.mkdir(exist_ok=True)
    report = Report()
    log = open(workdir / "daemon.log", "ab")
    proc = _mount(state, mnt, log)
    try:
        for it in range(iterations):
            writers = [subprocess.Popen([sys.executable, "-c",
                                         "import sys; from tests.harness.crash import "
                                         "writer_main as w; w(sys.argv[1], int(sys.argv[2]), "
                                         "sys.argv[3], int(sys.argv[4]))",
                                         str(mnt), str(w), str(acks / f"w{w}"), str(it * 100_000)],
                                        cwd=Path(__file__).parents[2])
                       for w in range(WRITERS + SMALL_WRITERS)]
            time.sleep(rng.uniform(min_run_s, max_run_s))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for w in writers:
                try:
                    w.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    w.kill()
                    report.problems.append("a writer hung after the crash")
            _unmount_dead(mnt)
            started = time.monotonic()
            proc = _mount(state, mnt, log)
            report.remount_s.append(time.monotonic() - started)
            if report.remount_s[-1] > max_remount_s:
                report.problems.append(f"remount took {report.remount_s[-1]:.1f} s")
            acked = set()
            for f in acks.iterdir():
                if f.suffix != ".errors":
                    acked |= {line for line in f.read_text().splitlines() if line}
            report.acknowledged = len(acked)
            check(mnt, state, acked, report)
            report.iterations += 1
            if progress:
                progress(report)
            if report.problems:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _unmount_dead(mnt)
        log.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/crashtest",
        description="Kill the worm-fs daemon with SIGKILL at random moments while eight "
        "writers write files of mixed and small sizes; remount and check that every acknowledged "
        "file is intact and every sealed file is exactly what was written.")
    parser.add_argument("--iterations", "-n", type=int, default=50)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", help="work directory (default: a new one under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="worm-fs-crash-", dir="/var/tmp"))

    def progress(r: Report) -> None:
        print(f"iteration {r.iterations}/{args.iterations}: {r.acknowledged} acknowledged, "
              f"{r.sealed_unacknowledged} sealed but unacknowledged, {r.quarantined} "
              f"quarantined, remount {r.remount_s[-1]:.2f} s, "
              f"{len(r.problems)} problem(s)", file=sys.stderr, flush=True)

    report = run(args.iterations, workdir, seed=args.seed, progress=progress)
    summary = {
        "iterations": report.iterations, "seed": args.seed,
        "acknowledged_files": report.acknowledged,
        "sealed_unacknowledged": report.sealed_unacknowledged,
        "quarantined_seen": report.quarantined,
        "commits": report.commits, "commit_flushes": report.commit_flushes,
        "commits_shared": report.commits_shared,
        "max_remount_s": round(max(report.remount_s, default=0), 3),
        "problems": report.problems,
    }
    print(json.dumps(summary, indent=2) if args.json else
          f"{report.iterations} iterations (seed {args.seed}): {report.acknowledged} "
          f"acknowledged files, 0 lost" if not report.problems else
          "FAILED:\n" + "\n".join(report.problems))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not report.problems and report.iterations == args.iterations else 1


if __name__ == "__main__":
    sys.exit(main())
