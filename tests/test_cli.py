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
    ["log", "consistency"],
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
    one_line_error(run_cli("mount", str(tmp_path / "s"), str(tmp_path / "m"), "--replicate",
                           "sync"), 2, "--replicate sync needs --bucket")


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


def test_log_consistency_proves_an_old_checkpoint_extends(mnt: Mount) -> None:
    from worm_fs.audit.checkpoint import VerifierKey, open_checkpoint
    from worm_fs.audit.merkle import verify_consistency

    key = VerifierKey.parse(run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip())
    (mnt.path / "a").write_bytes(b"a")
    old = open_checkpoint(run_cli("log", "checkpoint", str(mnt.path), check=True).stdout, key)
    for name in "bcd":
        (mnt.path / name).write_bytes(name.encode())
    out = json.loads(run_cli("log", "consistency", str(mnt.path), str(old.size), "--json",
                             check=True).stdout)
    new = open_checkpoint(out["new_checkpoint"], key)
    assert open_checkpoint(out["old_checkpoint"], key) == old
    assert new.size == out["new_size"] > old.size
    proof = [bytes.fromhex(h) for h in out["proof"]]
    assert proof and verify_consistency(old.size, new.size, old.root, new.root, proof)
    assert not verify_consistency(old.size, new.size, old.root, new.root, proof[::-1])
    # The human form lists the same hashes, one per line.
    text = run_cli("log", "consistency", str(mnt.path), str(old.size), str(new.size),
                   check=True).stdout
    assert all(h in text.splitlines() for h in out["proof"])
    one_line_error(run_cli("log", "consistency", str(mnt.path), str(new.size), str(old.size)),
                   2, "larger than NEW_SIZE")
    one_line_error(run_cli("log", "consistency", str(mnt.path), "0", str(new.size + 10**6)),
                   2, "beyond the log")
    one_line_error(run_cli("log", "consistency", str(mnt.path), str(old.size + 1)),
                   2, "no signed checkpoint of size")


def test_log_show_raw_gives_the_hashed_bytes(mnt: Mount) -> None:
    from worm_fs.audit.merkle import leaf_hash

    awkward = ["caf\u00e9", "\U0001f600", "q\"b\\s", "ctl\x01\x1b", os.fsdecode(b"bad\xff")]
    for name in awkward:
        (mnt.path / name).write_bytes(b"x")
    raw = subprocess.run([*WORM_FS, "log", "show", str(mnt.path), "--raw"], check=True,
                         capture_output=True).stdout
    lines = raw.split(b"\n")
    assert lines.pop() == b""
    shown = [json.loads(line) for line in run_cli("log", "show", str(mnt.path), "--json",
                                                  check=True).stdout.splitlines()]
    assert len(lines) == len(shown)
    assert [leaf_hash(line).hex() for line in lines] == [r["leaf_hash"] for r in shown]
    assert all(line.isascii() for line in lines)
    paths = {json.loads(line).get("path") for line in lines}
    assert all("/" + name in paths for name in awkward)


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


#: What a forger puts in a path: a newline and a record line of her own (its "/" is the
#: one between a directory and a file), terminal sequences (erase line, set the window
#: title), a right-to-left override and a Unicode line separator.
FAKE_RECORD = "     99 2026-01-01T00:00:00 hold_clear ok      /models uid=0 pid=1 (worm-fs)"
_SLASH = FAKE_RECORD.index("/")
FORGED_DIR = "run\n" + FAKE_RECORD[:_SLASH]
FORGED_NAME = (f"{FORGED_DIR}/{FAKE_RECORD[_SLASH + 1:]}"
               "\x1b[2K\x1b]0;t\x07\u202egpj.exe\u2028end\x7f\x85")
SET_COMM = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'ev\\nil\\x1b[31m', 0, 0, 0); "
            "open(sys.argv[1], 'wb').write(b'z')")


def test_log_show_prints_each_record_on_one_line_whatever_the_names(mnt: Mount) -> None:
    (mnt.path / FORGED_DIR).mkdir()
    (mnt.path / FORGED_NAME).write_bytes(b"x")
    with open(os.fsencode(mnt.path) + b"/not-utf8-\xff", "wb") as f:  # a lone surrogate
        f.write(b"y")
    subprocess.run([sys.executable, "-c", SET_COMM, str(mnt.path / "by-comm")], check=True)
    wait_sealed(mnt.path / FORGED_NAME)
    wait_sealed(mnt.path / "by-comm")
    result = run_cli("log", "show", str(mnt.path), check=True)
    out = result.stdout
    records = [json.loads(line) for line in
               run_cli("log", "show", str(mnt.path), "--json", check=True).stdout.split("\n")
               if line]
    lines = out.splitlines()  # splits at \x1c-\x1e, \x85, \u2028 and \u2029 too
    assert len(lines) == len(records), out
    assert [int(line.split()[0]) for line in lines] == [r["seq"] for r in records]
    assert FAKE_RECORD not in lines and not any(line.startswith("     99 ") for line in lines)
    for raw in ("\x1b", "\x07", "\x7f", "\x85", "\u202e", "\u2028"):
        assert raw not in out
    escaped = ("/run\\n" + FAKE_RECORD.replace(" ", "\\x20") +
               "\\x1b[2K\\x1b]0;t\\x07\\u202egpj.exe\\u2028end\\x7f\\x85")
    assert escaped in out
    assert "/not-utf8-\\udcff" in out
    assert "(ev\\nil\\x1b[31m)" in out
    # JSON Lines are unchanged: the names round-trip.
    paths = {r.get("path") for r in records}
    assert "/" + FORGED_NAME in paths and "/not-utf8-\udcff" in paths
    assert any(r.get("comm") == "ev\nil\x1b[31m" for r in records)


def test_stat_prints_a_forged_name_escaped(mnt: Mount) -> None:
    (mnt.path / FORGED_DIR).mkdir()
    (mnt.path / FORGED_NAME).write_bytes(b"x")
    wait_sealed(mnt.path / FORGED_NAME)
    out = run_cli("stat", str(mnt.path / FORGED_NAME), check=True).stdout
    assert "\x1b" not in out and FAKE_RECORD not in out.splitlines()
    assert all(line[:11].strip().endswith(":") for line in out.splitlines()), out
    data = json.loads(run_cli("stat", str(mnt.path / FORGED_NAME), "--json", check=True).stdout)
    assert data["path"] == str(mnt.path / FORGED_NAME)


def test_printable_escapes_controls_separators_bidi_and_the_backslash() -> None:
    from worm_fs.cli import printable

    assert printable("a\\b\n\r\t\x00\x1b\x7f\x9f\xad") == "a\\\\b\\n\\r\\t\\x00\\x1b\\x7f\\x9f\\xad"
    assert printable("\u2028\u2029\u202a\u202e\u2066\u2069\u200b\ufeff") == (
        "\\u2028\\u2029\\u202a\\u202e\\u2066\\u2069\\u200b\\ufeff")
    assert printable("/b\udcffd") == "/b\\udcffd"
    assert printable("é 日本 🙂") == "é 日本 🙂"
    assert printable("a b", field=True) == "a\\x20b"
