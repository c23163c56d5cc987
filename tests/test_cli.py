"""The worm-fs command: mounting, errors, and the reporting commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WORM_FS, Mount, run_cli, wait_sealed

SUBCOMMANDS = [
    ["mount"], ["umount"], ["stat"], ["stats"], ["verify"], ["log"], ["log", "show"],
    ["log", "verify"], ["log", "checkpoint"], ["log", "pubkey"], ["log", "prove"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_command_has_help(words: list[str]) -> None:
    result = run_cli(*words, "--help")
    assert result.returncode == 0
    assert "usage: worm-fs" in result.stdout


def one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("worm-fs: ") and text in lines[0], lines


def test_mount_argument_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_line_error(run_cli("mount", str(tmp_path / "s"), str(tmp_path / "missing")), 2,
                   "does not exist")
    one_line_error(run_cli("mount", str(tmp_path / "s"), str(tmp_path / "full")), 2,
                   "not empty")
    (tmp_path / "m").mkdir()
    one_line_error(run_cli("mount", str(tmp_path / "no" / "such" / "s"), str(tmp_path / "m")),
                   2, "does not exist")
    one_line_error(run_cli("mount", str(tmp_path / "full"), str(tmp_path / "m")), 2,
                   "holds no worm-fs store")
    one_line_error(run_cli("mount", str(tmp_path / "s"), str(tmp_path / "m"), "--settle", "-1"),
                   2, "--settle")


def test_mount_returns_when_ready_and_umount_stops_the_daemon(tmp_path: Path) -> None:
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli("mount", str(state), str(mnt), check=True)
    try:
        assert os.path.ismount(mnt), result.stdout
        (mnt / "f").write_text("hi")  # usable at once
        assert oct(os.stat(state).st_mode & 0o777) == "0o700"
        second = tmp_path / "mnt2"
        second.mkdir()
        one_line_error(run_cli("mount", str(state), str(second)), 4, "another worm-fs daemon")
        one_line_error(run_cli("mount", str(state), str(second), "--foreground"), 4,
                       "another worm-fs daemon")
    finally:
        done = run_cli("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mnt)


def test_foreground_daemon_exits_0_on_sigterm(mount_factory) -> None:
    m = mount_factory()
    assert m.stop() == 0
    assert not os.path.ismount(m.path)


def test_stat_and_stats_json(mnt: Mount) -> None:
    (mnt.path / "a").write_bytes(b"a" * 1000)
    wait_sealed(mnt.path / "a")
    st = json.loads(run_cli("stat", str(mnt.path / "a"), "--json", check=True).stdout)
    assert st["state"] == "sealed" and st["size"] == 1000 and len(st["sha256"]) == 64
    assert st["sealed_at"].endswith("Z")
    stats = json.loads(run_cli("stats", str(mnt.path / "a"), "--json", check=True).stdout)
    for key in ("files", "logical_bytes", "stored_bytes", "chunks", "dedup_ratio"):
        assert key in stats
    assert stats["files"] == 1 and stats["logical_bytes"] == 1000


def test_commands_outside_a_mount_fail_cleanly(tmp_path: Path) -> None:
    one_line_error(run_cli("stat", str(tmp_path)), 2, "not inside a worm-fs mount")
    one_line_error(run_cli("stats", str(tmp_path / "nope")), 2, "no such file")
    one_line_error(run_cli("verify", str(tmp_path)), 2, "not inside a worm-fs mount")


def test_log_pubkey_checkpoint_and_prove(mnt: Mount) -> None:
    from worm_fs.audit.checkpoint import VerifierKey, open_checkpoint
    from worm_fs.audit.merkle import verify_inclusion

    (mnt.path / "a").write_bytes(b"a")
    key = VerifierKey.parse(run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip())
    note = run_cli("log", "checkpoint", str(mnt.path), check=True).stdout
    cp = open_checkpoint(note, key)
    assert cp.size > 0
    proof = json.loads(run_cli("log", "prove", str(mnt.path), "1", check=True).stdout)
    assert verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]), 1, proof["tree_size"],
        [bytes.fromhex(h) for h in proof["proof"]], open_checkpoint(proof["checkpoint"], key).root,
    )


def test_log_show_follow_streams_new_records(mnt: Mount) -> None:
    proc = subprocess.Popen([*WORM_FS, "log", "show", str(mnt.path), "--json", "--follow"],
                            stdout=subprocess.PIPE, text=True)
    try:
        (mnt.path / "followed").write_bytes(b"x")
        for line in proc.stdout:
            if json.loads(line).get("path") == "/followed":
                break
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_python_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "worm_fs", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "Exit codes" in result.stdout
