"""Faults: a full disk, storage I/O errors injected with strace, an unexpected exception
inside a handler, hostile and slow control-channel clients."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mount, as_user, run_cli, wait_sealed
from worm_fs.store import Store, u64

ALICE = (1001, 1001, ())
CAROL = (1003, 1003, (4242,))


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    raise AssertionError(f"{fn} succeeded")


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------ disk full
@pytest.fixture
def small_disk(public_base: Path) -> Iterator[Path]:
    disk = public_base / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", str(disk)],
                   check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_enospc_and_the_store_recovers_after_a_deletion(
    small_disk: Path, public_base: Path
) -> None:
    m = Mount(small_disk / "state", public_base / "mnt",
              ["--allow-other", "--admin-group", "4242", "--settle", "0",
               "--runtime-dir", str(public_base / "run")])
    m.start()
    try:
        keep = os.urandom(5 << 20)
        write_file(m.path / "keep", keep)
        (m.path / "fills").mkdir()
        hit = None
        for i in range(40):
            try:
                write_file(m.path / "fills" / f"f{i}", os.urandom(8 << 20))
            except OSError as exc:
                hit = exc.errno
                break
        assert hit == errno.ENOSPC
        assert os.path.ismount(m.path)
        victim = m.path / "fills" / f"f{i}"
        time.sleep(0.2)  # its release (and quarantine) follows the failed close
        if victim.exists():  # unless its create itself found no room
            assert os.getxattr(victim, "user.worm.state") in (b"quarantined", b"writing")
        assert hashlib.sha256((m.path / "keep").read_bytes()).digest() == \
            hashlib.sha256(keep).digest()
        time.sleep(0.3)
        code, out, err = as_user(ALICE, "delete", "request", str(m.path / "fills"),
                                 "--reason", "disk full", "--json")
        assert code == 0, err
        code, _, err = as_user(CAROL, "delete", "approve", str(m.path), json.loads(out)["id"])
        assert code == 0, err
        time.sleep(0.3)  # the group commit catches up once there is room
        write_file(m.path / "after", b"a" * (8 << 20))
        wait_sealed(m.path / "after")
        assert (m.path / "after").read_bytes() == b"a" * (8 << 20)
        assert run_cli("log", "verify", str(m.path)).returncode == 0
        assert run_cli("verify", str(m.path)).returncode == 0
    finally:
        m.stop()


def fill_concurrently(directory: Path, writers: int, size: int) -> dict[int, list]:
    """``writers`` threads write ``size``-byte files into ``directory`` until one write
    or close fails; returns each writer's (name, bytes) files that closed and the errno
    that stopped it."""
    outcome: dict[int, list] = {}

    def fill(w: int) -> None:
        done: list[tuple[str, bytes]] = []
        for i in range(200):
            data = os.urandom(size)
            name = f"w{w}-{i}"
            try:
                write_file(directory / name, data)
            except OSError as exc:
                outcome[w] = [done, exc.errno]
                return
            done.append((name, data))
        outcome[w] = [done, None]

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return outcome


def test_a_full_disk_under_several_writers_fails_only_what_did_not_fit(
    small_disk: Path, public_base: Path
) -> None:
    m = Mount(small_disk / "state", public_base / "mnt", ["--settle", "0"])
    m.start()
    try:
        (m.path / "fills").mkdir()
        outcome = fill_concurrently(m.path / "fills", 4, 3 << 20)
        assert sorted(outcome) == [0, 1, 2, 3]
        assert {err for _, err in outcome.values()} == {errno.ENOSPC}  # never EIO or a hang
        assert os.path.ismount(m.path)
        for done, _ in outcome.values():  # every close that returned 0 kept its bytes
            for name, data in done:
                wait_sealed(m.path / "fills" / name)
                assert (m.path / "fills" / name).read_bytes() == data
        assert run_cli("log", "verify", str(m.path)).returncode == 0
    finally:
        m.stop()
    assert "Traceback" not in m.daemon_log()


# ------------------------------------------------------------------------ injected I/O errors
def strace_inject(pid: int, syscall: str) -> subprocess.Popen:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/setup installs it)")
    proc = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-o", "/dev/null",
                             "-e", f"trace={syscall}", "-e", f"inject={syscall}:error=EIO"],
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let strace attach to every thread
    return proc


@pytest.mark.parametrize("syscall", ["pwrite64", "fdatasync"])
def test_store_io_errors_fail_the_write_and_put_the_store_in_failsafe(
    mount_factory, syscall: str
) -> None:
    m = mount_factory("--settle", "0")
    write_file(m.path / "before", b"b" * 300_000)
    wait_sealed(m.path / "before")
    pid = m.proc.pid
    tracer = strace_inject(pid, syscall)
    try:
        with pytest.raises(OSError) as exc:
            write_file(m.path / "during", os.urandom(3 << 20))
        assert exc.value.errno in (errno.EIO, errno.EROFS)
        assert errno_of(os.mkdir, m.path / "newdir") == errno.EROFS  # failsafe: no changes
        # The log cannot be written either, so opens fail closed meanwhile.
        assert errno_of(os.open, m.path / "before", os.O_RDONLY) == errno.EIO
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # once the group commit gets through again, reads answer
        try:
            assert (m.path / "before").read_bytes() == b"b" * 300_000
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert errno_of(os.mkdir, m.path / "newdir") == errno.EROFS  # changes: not until remount
    assert "FAILSAFE" in m.daemon_log()
    m.restart()
    assert (m.path / "before").read_bytes() == b"b" * 300_000
    if (m.path / "during").exists():  # its create may have failed too
        assert os.getxattr(m.path / "during", "user.worm.state") == b"quarantined"
    os.mkdir(m.path / "newdir")
    assert run_cli("verify", str(m.path)).returncode == 0
    assert run_cli("log", "verify", str(m.path)).returncode == 0


def test_an_io_error_under_several_writers_fails_them_all_and_goes_failsafe(
    mount_factory,
) -> None:
    m = mount_factory("--settle", "0")
    write_file(m.path / "before", b"b" * 300_000)
    wait_sealed(m.path / "before")
    (m.path / "fills").mkdir()
    tracer = strace_inject(m.proc.pid, "fdatasync")
    try:
        outcome = fill_concurrently(m.path / "fills", 4, 1 << 20)
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    assert sorted(outcome) == [0, 1, 2, 3]
    assert {err for _, err in outcome.values()} <= {errno.EIO, errno.EROFS}
    assert errno_of(os.mkdir, m.path / "newdir") == errno.EROFS
    assert m.daemon_log().count("FAILSAFE") == 1  # logged once, whoever hit it
    m.restart()
    assert (m.path / "before").read_bytes() == b"b" * 300_000
    for name in os.listdir(m.path / "fills"):  # nothing half-written passes as sealed
        assert os.getxattr(m.path / "fills" / name, "user.worm.state") == b"quarantined"
    assert run_cli("verify", str(m.path)).returncode == 0
    assert run_cli("log", "verify", str(m.path)).returncode == 0


# ------------------------------------------------------------------------ handler bugs
def test_an_unexpected_exception_in_a_handler_is_eio_and_the_daemon_stays_up(
    mount_factory,
) -> None:
    m = mount_factory()
    write_file(m.path / "fine", b"fine")
    write_file(m.path / "broken", b"broken")
    wait_sealed(m.path / "broken")
    m.stop()
    store = Store(m.state)
    try:
        with store.write() as tx:
            ino = tx.get_dirent(1, b"broken")
            tx.raw_put("inodes", u64(ino), b"{not json")
    finally:
        store.close()
    m.start()
    m.expect_tracebacks = True
    assert errno_of(os.stat, m.path / "broken") == errno.EIO
    assert (m.path / "fine").read_bytes() == b"fine"
    assert m.proc.poll() is None
    assert "unexpected error in lookup" in m.daemon_log()


# ------------------------------------------------------------------------ hostile clients
def test_100000_malformed_messages_change_nothing(mnt: Mount) -> None:
    sock_path = os.getxattr(mnt.path, "user.worm.control").decode()
    bad = [b"garbage\n", b"{}\n", b'{"v":1}\n', b'{"v":1,"op":"delete_request"}\n',
           b'{"v":2,"op":"hello"}\n', b"[" * 100 + b"\n", b'{"v":1,"op":"delete_list","x":' +
           b"1" * 500 + b"}\n"]
    before = run_cli("log", "show", str(mnt.path), "--json").stdout.count("\n")
    total = 0
    errors = 0
    for _conn in range(10):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock_path)
            s.settimeout(30)
            payload = b"".join(bad[i % len(bad)] for i in range(10_000))

            def send(sock: socket.socket = s, data: bytes = payload) -> None:
                sock.sendall(data)  # while we read the answers, or both sides would stall
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            answers = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                answers += chunk
            sender.join()
        lines = answers.splitlines()
        total += 10_000
        errors += sum(1 for line in lines if not json.loads(line)["ok"])
    # every message but the valid delete_list ones (every 7th) got an error
    valid = 10 * sum(1 for i in range(10_000) if i % len(bad) == len(bad) - 1)
    assert errors == total - valid
    assert run_cli("delete", "list", str(mnt.path), "--json").stdout.strip() == "[]"
    after = run_cli("log", "show", str(mnt.path), "--json").stdout.count("\n")
    assert after - before < 50  # no state change, no flood of records
    write_file(mnt.path / "still-serving", b"yes")
    assert (mnt.path / "still-serving").read_bytes() == b"yes"


def test_1000_slow_connections_do_not_lock_out_admins(mnt: Mount) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    request_sock = os.getxattr(mnt.path, "user.worm.control").decode()
    slow = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(request_sock)
            s.sendall(b'{"v":1,"op":')  # never finished
            slow.append(s)
        started = time.monotonic()
        result = run_cli("delete", "list", str(mnt.path))  # request socket: full
        assert time.monotonic() - started < 5
        assert result.returncode in (0, 4), result.stderr  # served, or told "busy" at once
        hold = run_cli("hold", "set", str(mnt.path), "--reason", "audit")  # admin socket
        assert hold.returncode == 0, hold.stderr
        write_file(mnt.path / "f", b"mount unaffected")
    finally:
        for s in slow:
            s.close()
    deadline = time.monotonic() + 15
    while True:
        result = run_cli("delete", "list", str(mnt.path))
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.returncode == 0, result.stderr
