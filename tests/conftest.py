"""Shared fixtures: real mounts served by a daemon subprocess, and a real Ceph RGW.

The test process never serves the mount it reads: the daemon runs as
``python -m worm_fs mount ... --foreground`` in a child process, and every teardown
unmounts (SIGTERM, then ``fusermount3 -u -z`` if the daemon did not).

Tests that talk S3 use the ``rgw`` fixture: the one-node cluster of
``scripts/ceph-dev``, started once per session; they are marked ``s3``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worm_fs.cli import main as cli_main
from worm_fs.store import Store

WORM_FS = [sys.executable, "-m", "worm_fs"]

#: Fixtures that mount a real filesystem (or start a daemon); tests using any of them
#: are marked ``mount`` and left out by ``scripts/test --fast``.
MOUNTING_FIXTURES = frozenset({
    "mount_factory", "mnt", "settled_mnt", "store", "store_factory", "pristine", "copy",
    "gate", "small_disk", "public_base",
})
#: Modules whose tests start daemons themselves.
MOUNTING_MODULES = frozenset({"test_crash", "test_service", "test_cli", "test_ml_writers"})
#: Fixtures that need the Ceph RGW; tests using any of them are marked ``s3`` and left
#: out by ``scripts/test --fast``.
S3_FIXTURES = frozenset({"rgw"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in MOUNTING_MODULES or MOUNTING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.mount)
        if S3_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.s3)


def run_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``worm-fs`` command and capture its output."""
    result = subprocess.run([*WORM_FS, *args], capture_output=True, text=True, timeout=120,
                            **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"worm-fs {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def wait_for(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    """Poll ``what()`` until it returns something true, and return that; fail the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(step)


def wait_sealed(path: Path, timeout: float = 10.0) -> None:
    """Wait for the seal that follows ``close()``.

    The kernel sends FUSE ``release`` asynchronously after the last ``close()``
    returns, so the seal lands a moment later (the bytes are durable already).
    """
    deadline = time.monotonic() + timeout
    while os.getxattr(path, "user.worm.state") != b"sealed":
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was not sealed within {timeout} s")
        time.sleep(0.005)


class Mount:
    """A worm-fs daemon serving ``path`` from ``state``."""

    def __init__(self, state: Path, path: Path, options: list[str]) -> None:
        self.state = state
        self.path = path
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.log = state.parent / f"{state.name}-daemon.log"
        #: Set by tests that provoke errors the daemon must log with a traceback.
        self.expect_tracebacks = False

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*WORM_FS, "mount", str(self.state), str(self.path), "--foreground", *self.options],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("mount did not come up in 30 s")
            time.sleep(0.02)
        return self

    def stop(self) -> int:
        """Clean shutdown (SIGTERM); returns the daemon's exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._force_unmount()
        return self.proc.returncode

    def kill(self) -> None:
        """Crash the daemon (SIGKILL) and clear the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._force_unmount()

    def _force_unmount(self) -> None:
        for _ in range(50):
            if not _is_mount(self.path):
                return
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            time.sleep(0.05)

    def restart(self) -> Mount:
        self.stop()
        return self.start()

    def store(self, *, write: bool = False) -> Store:
        """Open the store directly (next to the daemon, or while unmounted)."""
        return Store(self.state, readonly=not write)

    def daemon_log(self) -> str:
        return self.log.read_text(errors="replace")


def _is_mount(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator:
    mounts: list[Mount] = []

    def make(*options: str, name: str = "m", state: Path | None = None) -> Mount:
        m = Mount(state or tmp_path / f"{name}-state", tmp_path / f"{name}-mnt", list(options))
        mounts.append(m)
        return m.start()

    yield make
    for m in mounts:
        m.stop()
        if "Traceback" in m.daemon_log() and not m.expect_tracebacks:
            pytest.fail(f"daemon logged a traceback:\n{m.daemon_log()}")


@pytest.fixture
def mnt(mount_factory) -> Mount:
    """A mount with the default settle window (60 s)."""
    return mount_factory()


@pytest.fixture
def settled_mnt(mount_factory) -> Mount:
    """A mount with the settle window off: entries are settled at once."""
    return mount_factory("--settle", "0")


def as_user(who: tuple[int, int, tuple[int, ...]], *argv: str) -> tuple[int, str, str]:
    """Run ``worm-fs ARGV`` in a forked child with another identity."""
    uid, gid, groups = who
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            os.close(out_r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = cli_main(list(argv))
            os.write(out_w, json.dumps([out.getvalue(), err.getvalue()]).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(out_w, json.dumps(["", f"child failed: {exc!r}"]).encode())
        finally:
            os._exit(code)
    os.close(out_w)
    with os.fdopen(out_r, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    out, err = json.loads(data or b'["", ""]')
    return os.waitstatus_to_exitcode(status), out, err


def as_ids(who: tuple[int, int, tuple[int, ...]], fn: Callable[[], object]) -> int:
    """Run ``fn`` (filesystem calls) in a forked child with ``who``'s uid, gid and
    groups; returns 0, or the errno of the OSError it failed with (98: another error)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            uid, gid, groups = who
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            fn()
        except OSError as exc:
            code = exc.errno or 99
        except BaseException:  # noqa: BLE001 - any other failure is a test failure
            code = 98
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def as_uid(uid: int, fn: Callable[[], object]) -> int:
    """:func:`as_ids` with gid = uid and no other groups."""
    return as_ids((uid, uid, ()), fn)


@pytest.fixture
def public_base() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="worm-fs-test-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


CEPH_DEV = Path(__file__).resolve().parent.parent / "scripts" / "ceph-dev"


@dataclass(frozen=True)
class Rgw:
    """The S3 endpoint of ``scripts/ceph-dev`` and its user's credentials."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    #: The cluster's directory (PID files, logs), as ``scripts/ceph-dev`` uses it.
    cluster_dir: Path

    def client(self):
        """A boto3 S3 client for this endpoint (path-style: no DNS for buckets)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                          retries={"mode": "standard", "max_attempts": 3}),
        )


def ceph_dev(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``scripts/ceph-dev``; fail the test with its output if it fails."""
    result = subprocess.run([str(CEPH_DEV), *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"scripts/ceph-dev {' '.join(args)} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def rgw() -> Iterator[Rgw]:
    """The one-node Ceph RGW of ``scripts/ceph-dev``, shared by the whole session.

    Started here if it is not running, and then stopped at the end of the session; a
    cluster that was running already (``scripts/test`` starts one) is left running.
    Each test uses its own bucket: the cluster keeps everything between runs.
    """
    was_running = subprocess.run([str(CEPH_DEV), "status"], capture_output=True,
                                 timeout=60).returncode == 0
    ceph_dev("start")
    env = {}
    for line in ceph_dev("env").stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    yield Rgw(
        endpoint_url=env["AWS_ENDPOINT_URL"],
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_DEFAULT_REGION"],
        cluster_dir=Path(os.environ.get("WORM_FS_CEPH_DIR", "/var/tmp/worm-fs-ceph")),
    )
    if not was_running:
        ceph_dev("stop")


@pytest.fixture
def bucket(rgw: Rgw, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket with Object Lock; the daemon and the CLI get the credentials the way
    every S3 tool takes them."""
    name = f"worm-{secrets.token_hex(5)}"
    rgw.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", rgw.region)
    return name
