"""Running as a service: the systemd unit, readiness notification, config files, logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WORM_FS, run_cli
from worm_fs.cli import JournalFormatter

REPO = Path(__file__).resolve().parents[1]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/setup installs systemd)"
    unit = (REPO / "systemd" / "worm-fs@.service").read_text()
    assert "Type=notify" in unit and "RuntimeDirectory=" in unit
    local = unit.replace("/opt/worm-fs/.venv/bin/worm-fs", str(REPO / ".venv/bin/worm-fs"))
    (tmp_path / "worm-fs@demo.service").write_text(local)
    result = subprocess.run([analyze, "verify", str(tmp_path / "worm-fs@demo.service")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "worm-fs@demo" not in result.stderr, result.stderr  # no warnings about it


def test_ready_only_once_mount_and_sockets_are_up(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(30)
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=str(notify))
    proc = subprocess.Popen([*WORM_FS, "mount", str(state), str(mnt), "--foreground",
                             "--runtime-dir", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        message = listener.recv(4096).decode()
        assert message == "READY=1"
        assert os.path.ismount(mnt)  # by the time READY=1 was sent
        assert (tmp_path / "run" / "request.sock").exists()
        assert (tmp_path / "run" / "admin.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mnt)
        assert not (tmp_path / "run" / "request.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        listener.close()


def test_config_file_settings_with_flags_overriding(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = tmp_path / "store.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmountpoint = "{mnt}"\n'
                      'settle = 0\naudit_reads = "each"\ncheckpoint_records = 5\n')
    result = run_cli("mount", "--config", str(config), "--settle", "7")
    assert result.returncode == 0, result.stderr
    try:
        (mnt / "f").write_bytes(b"x")
    finally:
        assert run_cli("umount", str(mnt)).returncode == 0
    records = [json.loads(line) for line in
               run_cli("log", "show", str(tmp_path / "state"), "--json").stdout.splitlines()]
    mount = next(r for r in records if r["op"] == "mount")
    assert mount["settle"] == 7.0  # the flag wins
    assert mount["audit_reads"] == "each"  # from the file


@pytest.mark.parametrize("content, message", [
    ('settle = 5\nsettel = 6\n', "unknown setting(s): settel"),
    ('settle = "soon"\n', "settle must be float"),
    ('audit_reads = "some"\n', "audit_reads must be one of"),
    ('settle = [\n', "config file"),
])
def test_bad_config_files_are_one_line_errors(tmp_path: Path, content: str,
                                              message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    (tmp_path / "m").mkdir()
    result = run_cli("mount", str(tmp_path / "s"), str(tmp_path / "m"), "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_journal_lines_carry_syslog_priorities() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("worm_fs.x", logging.ERROR, __file__, 1, "disk %s", ("full",),
                               None)
    assert formatter.format(record) == "<3>worm_fs.x: disk full"
    record.levelno = logging.INFO
    assert formatter.format(record).startswith("<6>")


def test_the_daemon_logs_without_tracebacks_for_expected_errors(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "busy").write_text("x")
    result = subprocess.run([*WORM_FS, "mount", str(tmp_path / "s"), str(tmp_path / "m"),
                             "--foreground"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"worm-fs: mountpoint {tmp_path / 'm'} is not empty"]


def test_prometheus_metrics_count_refusals_by_operation(mount_factory) -> None:
    m = mount_factory("--settle", "0")
    (m.path / "a").write_bytes(b"a" * 1000)
    for _ in range(3):
        with pytest.raises(OSError):
            os.unlink(m.path / "a")
    with pytest.raises(OSError):
        os.open(m.path / "a", os.O_WRONLY)
    assert run_cli("delete", "request", str(m.path / "a"), "--reason", "x").returncode == 0
    assert run_cli("log", "checkpoint", str(m.path)).returncode == 0
    time.sleep(0.3)  # refusals are group-committed
    out = run_cli("stats", str(m.path), "--prometheus", check=True).stdout
    metrics: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP worm_fs_", "# TYPE worm_fs_"))
            continue
        name, value = line.rsplit(" ", 1)
        metrics[name] = float(value)
    store = next(k for k in metrics if k.startswith("worm_fs_sealed_files")).split('"')[1]
    assert metrics[f'worm_fs_refusals_total{{op="unlink",store="{store}"}}'] == 3
    assert metrics[f'worm_fs_refusals_total{{op="open",store="{store}"}}'] == 1
    assert metrics[f'worm_fs_sealed_files{{store="{store}"}}'] == 1
    assert metrics[f'worm_fs_sealed_bytes{{store="{store}"}}'] == 1000
    assert metrics[f'worm_fs_deletion_requests_pending{{store="{store}"}}'] == 1
    assert 0 <= metrics[f'worm_fs_audit_checkpoint_age_seconds{{store="{store}"}}'] < 60


# ---------------------------------------------------------------------- runtime directory
NOBODY = 65534


def mount_with_runtime_dir(tmp_path: Path, runtime: Path, *extra: str,
                           foreground: bool = False, **popen) -> subprocess.CompletedProcess:
    """``worm-fs mount`` with ``--runtime-dir runtime``; unmounts again if it came up."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    args = [*WORM_FS, "mount", str(tmp_path / "state"), str(mnt), "--runtime-dir",
            str(runtime), *extra]
    try:
        if foreground:  # would serve until stopped: give it a moment to refuse
            proc = subprocess.Popen([*args, "--foreground"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, **popen)
            try:
                out, err = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.terminate()
                out, err = proc.communicate(timeout=30)
            return subprocess.CompletedProcess(args, proc.returncode, out, err)
        return subprocess.run(args, capture_output=True, text=True, timeout=60, **popen)
    finally:
        if os.path.ismount(mnt):
            run_cli("umount", str(mnt))
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def refused(result: subprocess.CompletedProcess, *texts: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsafe runtime directory" in lines[0], lines
    for text in texts:
        assert text in lines[0], lines


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_runtime_dir_owned_by_another_user_refuses_the_start(
    tmp_path: Path, foreground: bool
) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chown(run, NOBODY, NOBODY)
    result = mount_with_runtime_dir(tmp_path, run, foreground=foreground)
    refused(result, f"{run} is owned by uid {NOBODY}")
    assert not (run / "admin.sock").exists() and not (run / "request.sock").exists()
    assert oct(os.stat(run).st_mode & 0o7777) == "0o755"  # refused, not "fixed"
    assert os.stat(run).st_uid == NOBODY


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_a_runtime_dir_writable_by_group_or_others_is_refused(tmp_path: Path,
                                                             mode: int) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, mode)
    refused(mount_with_runtime_dir(tmp_path, run), f"{run} is writable by")
    assert os.stat(run).st_mode & 0o7777 == mode
    assert not (run / "admin.sock").exists()


def test_a_parent_owned_by_another_user_or_writable_by_others_is_refused(
    tmp_path: Path
) -> None:
    parent = tmp_path / "parent"
    parent.mkdir(mode=0o755)
    (parent / "run").mkdir(mode=0o755)
    os.chown(parent, NOBODY, NOBODY)
    refused(mount_with_runtime_dir(tmp_path, parent / "run"),
            f"{parent} is owned by uid {NOBODY}")
    os.chown(parent, 0, 0)
    os.chmod(parent, 0o777)  # others could rename run away and put their own in its place
    refused(mount_with_runtime_dir(tmp_path, parent / "run"), f"{parent} is writable by")
    # A link to a trusted directory is no way around the check: the target is checked.
    link = tmp_path / "link"
    link.symlink_to(parent / "run")
    refused(mount_with_runtime_dir(tmp_path, link), f"{parent} is writable by")


def test_a_sticky_parent_is_accepted_and_sockets_get_their_modes_despite_the_umask(
    tmp_path: Path
) -> None:
    sticky = tmp_path / "sticky"  # like /tmp: world-writable, sticky, root's
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    run = sticky / "a" / "run"  # missing: the daemon creates a/ and run/
    target = tmp_path / "target"
    target.write_text("x")
    os.chmod(target, 0o644)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([*WORM_FS, "mount", str(tmp_path / "state"), str(mnt),
                             "--foreground", "--runtime-dir", str(run), "--admin-group",
                             str(NOBODY)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, umask=0o077)  # as the systemd unit sets it
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for directory in (sticky / "a", run):
            st = os.stat(directory)
            assert (st.st_uid, oct(st.st_mode & 0o7777)) == (0, "0o755")
        request, admin = os.lstat(run / "request.sock"), os.lstat(run / "admin.sock")
        assert stat.S_ISSOCK(request.st_mode) and stat.S_ISSOCK(admin.st_mode)
        assert oct(request.st_mode & 0o777) == "0o666"
        assert (oct(admin.st_mode & 0o777), admin.st_gid) == ("0o660", NOBODY)
        assert os.getxattr(mnt, "user.worm.admin_control").decode() == str(run / "admin.sock")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert proc.returncode == 0
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_the_default_runtime_dir_is_removed_at_a_clean_unmount(mount_factory) -> None:
    m = mount_factory()
    run = Path(os.getxattr(m.path, "user.worm.control").decode()).parent
    assert run.parent == Path("/run/worm-fs") and (run / "admin.sock").exists()
    assert m.stop() == 0
    assert not os.path.lexists(run)
    assert Path("/run/worm-fs").is_dir()  # shared by every store's daemon: kept


def test_a_runtime_dir_the_daemon_did_not_create_is_kept(mount_factory, tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir(mode=0o755)
    m = mount_factory("--runtime-dir", str(given), name="given")
    assert (given / "admin.sock").exists()
    assert m.stop() == 0
    assert given.is_dir() and list(given.iterdir()) == []  # sockets gone, directory kept

    made = tmp_path / "made"  # created by the daemon, but something else was put in it
    m = mount_factory("--runtime-dir", str(made), name="made")
    (made / "note").write_text("not the daemon's")
    assert m.stop() == 0
    assert sorted(p.name for p in made.iterdir()) == ["note"]

    made.joinpath("note").unlink()
    made.rmdir()
    m = mount_factory("--runtime-dir", str(made), name="made")
    assert m.stop() == 0
    assert not os.path.lexists(made)  # created by it and empty again: removed

    m = mount_factory("--runtime-dir", str(made), name="made")
    made.rename(tmp_path / "moved")  # its name now leads elsewhere, through a link
    made.symlink_to(tmp_path / "moved")
    assert m.stop() == 0
    assert made.is_symlink() and (tmp_path / "moved").is_dir()  # neither followed nor removed
    assert list((tmp_path / "moved").iterdir()) == []  # its own sockets are gone


#: Runs the CLI in a daemon whose every bind of admin.sock is followed at once by a
#: symlink to TARGET taking the socket's place: an attacker winning the race between
#: bind() and setting the socket's mode and group.
PLANTING_DAEMON = """
import os, socket, sys
target = os.environ["PLANT_TARGET"]
real_bind = socket.socket.bind
def bind(self, address):
    real_bind(self, address)
    if isinstance(address, str) and address.endswith("/admin.sock"):
        os.unlink(address)
        os.symlink(target, address)
socket.socket.bind = bind
from worm_fs.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_symlink_at_the_socket_path_is_not_followed_when_setting_its_mode(
    tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("not a socket")
    os.chmod(target, 0o644)
    before = target.stat()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PLANT_TARGET=str(target))
    proc = subprocess.Popen(
        [sys.executable, "-c", PLANTING_DAEMON, "mount", str(tmp_path / "state"), str(mnt),
         "--foreground", "--runtime-dir", str(tmp_path / "run"), "--admin-group",
         str(NOBODY)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and not os.path.ismount(mnt) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.terminate()
        _, err = proc.communicate(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    after = target.stat()
    assert (oct(after.st_mode & 0o7777), after.st_gid) == (
        oct(before.st_mode & 0o7777), before.st_gid)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "admin.sock is not the socket just bound" in err


def test_the_cli_sends_nothing_to_a_socket_another_user_put_in_the_daemons_place(
    mount_factory
) -> None:
    m = mount_factory()
    (m.path / "f").write_text("x")
    admin_path = os.getxattr(m.path, "user.worm.admin_control").decode()
    os.unlink(admin_path)
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.bind(admin_path)
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: listens (so SO_PEERCRED names it) as nobody
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            impostor.listen(1)
            impostor.settimeout(30)
            conn, _ = impostor.accept()
            conn.settimeout(5)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except TimeoutError:
                pass
            os.write(got_w, b"accepted:" + data)
        finally:
            os._exit(0)
    os.close(got_w)
    impostor.close()
    try:
        result = run_cli("hold", "set", str(m.path / "f"), "--reason", "litigation")
    finally:
        with os.fdopen(got_r, "rb") as r:
            received = r.read()
        os.waitpid(pid, 0)
    assert received == b"accepted:"  # connected, then closed without a byte sent
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not by this mount's daemon" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
