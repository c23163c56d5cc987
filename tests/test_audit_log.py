"""The audit log through a real mount: completeness, durability, and tamper detection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Mount, run_cli
from worm_fs.audit.checkpoint import Checkpoint, SigningKey, sign_checkpoint
from worm_fs.audit.log import FRONTIER_KEY, NEXT_SEQ_KEY
from worm_fs.audit.merkle import Frontier, leaf_hash
from worm_fs.store import Store, u64

WORKLOAD = textwrap.dedent("""
    import os, sys, time
    os.chdir(sys.argv[1])

    def refused(fn, *args):
        try:
            fn(*args)
        except OSError as exc:
            return exc.errno
        raise SystemExit(f"{fn.__name__} was allowed")

    def sealed(path):
        while os.getxattr(path, "user.worm.state") != b"sealed":
            time.sleep(0.005)

    with open("w.bin", "wb") as f:
        f.write(b"x" * 5000)
    sealed("w.bin")
    with open("w.bin", "rb") as f:
        f.read()
    refused(os.open, "w.bin", os.O_WRONLY)
    refused(os.unlink, "w.bin")
    os.mkdir("d")
    open("d/o", "wb").close()
    sealed("d/o")
    refused(os.rename, "d/o", "w.bin")
    os.symlink("w.bin", "l")
    refused(os.setxattr, "w.bin", "user.a", b"1")
    refused(os.truncate, "w.bin", 0)
    refused(os.link, "w.bin", "h")
    refused(os.rmdir, "d")
    print(os.getpid())
""")

EXPECTED = sorted([
    ("create", "ok", "/w.bin"), ("flush", "ok", "/w.bin"), ("seal", "ok", "/w.bin"),
    ("open", "ok", "/w.bin"), ("release", "ok", "/w.bin"),
    ("open", "EPERM", "/w.bin"), ("unlink", "EPERM", "/w.bin"),
    ("mkdir", "ok", "/d"),
    ("create", "ok", "/d/o"), ("flush", "ok", "/d/o"), ("seal", "ok", "/d/o"),
    ("rename", "EEXIST", "/d/o"), ("symlink", "ok", "/l"),
    ("setxattr", "EPERM", "/w.bin"), ("truncate", "EPERM", "/w.bin"),
    ("link", "EPERM", "/w.bin"), ("rmdir", "ENOTEMPTY", "/d"),
])


def show(m: Mount) -> list[dict]:
    out = run_cli("log", "show", str(m.state), "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_scripted_workload_yields_exactly_the_expected_records(mnt: Mount) -> None:
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, str(mnt.path)],
                          capture_output=True, text=True, check=True)
    pid = int(proc.stdout.strip())
    mnt.stop()  # flushes the group commit and ends the daemon cleanly
    mnt.start()
    recs = show(mnt)
    mine = [r for r in recs if r.get("pid") == pid]
    assert sorted((r["op"], r["result"], r["path"]) for r in mine) == EXPECTED
    for r in mine:
        assert r["uid"] == 0 and r["comm"].startswith("python")
        assert r["boot_id"] and r["time_ns"] > 0 and r["mono_ns"] > 0
        assert len(r["leaf_hash"]) == 64
    seal = next(r for r in mine if r["op"] == "seal" and r["path"] == "/w.bin")
    assert seal["size"] == 5000 and len(seal["sha256"]) == 64
    release = next(r for r in mine if r["op"] == "release")
    assert {"calls", "bytes", "ranges"} <= set(release["reads"])
    refused_open = next(r for r in mine if r["op"] == "open" and r["result"] == "EPERM")
    assert refused_open["flags"] & 3 == 1  # O_WRONLY


def test_every_read_call_is_recorded_with_audit_reads_each(mount_factory) -> None:
    m = mount_factory("--audit-reads", "each")
    (m.path / "f").write_bytes(b"r" * (3 << 20))
    m.restart()  # a fresh mount: the page cache is cold
    (m.path / "f").read_bytes()
    m.stop()
    m.start()
    reads = [r for r in show(m) if r["op"] == "read"]
    assert reads and sum(r["bytes"] for r in reads) == 3 << 20


def test_log_survives_remount_verifies_and_continues_its_seq(mnt: Mount) -> None:
    (mnt.path / "a").write_bytes(b"1")
    mnt.stop()
    before = show(mnt)
    mnt.start()
    (mnt.path / "b").write_bytes(b"2")
    mnt.stop()
    after = show(mnt)
    assert [r["seq"] for r in after] == list(range(len(after)))
    assert after[: len(before)] == before
    assert {"mount", "unmount"} <= {r["op"] for r in after}
    result = run_cli("log", "verify", str(mnt.state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "log intact" in result.stdout


# ------------------------------------------------------------------------ tampering
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, str]:
    """A stopped store with some history and a checkpoint kept 'off the host'."""
    base = tmp_path_factory.mktemp("tamper")
    m = Mount(base / "state", base / "mnt", ["--settle", "0"]).start()
    try:
        for i in range(12):
            (m.path / f"f{i}").write_bytes(bytes([i]) * 100)
        note = run_cli("log", "checkpoint", str(m.path), check=True).stdout
    finally:
        m.stop()
    return base / "state", note


@pytest.fixture
def copy(pristine, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the pristine store, and its off-host checkpoint file."""
    state, note = pristine
    dst = tmp_path / "state"
    shutil.copytree(state, dst)
    cp_file = tmp_path / "offhost.checkpoint"
    cp_file.write_text(note)
    return dst, cp_file


def verify(state: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("log", "verify", str(state), *extra)


def edit(state: Path, fn) -> None:
    store = Store(state)
    try:
        with store.write() as tx:
            fn(tx)
    finally:
        store.close()


def record(state: Path, seq: int) -> bytes:
    store = Store(state, readonly=True)
    try:
        with store.read() as rt:
            return rt.get_record(seq)
    finally:
        store.close()


def rebuild_tree_head(tx) -> None:
    """What an attacker with write access does to hide an edit: recompute the head."""
    frontier = Frontier()
    for _, raw in tx.iter_records():
        frontier.append(leaf_hash(raw))
    tx.put_meta(FRONTIER_KEY, frontier.to_bytes())
    tx.put_meta(NEXT_SEQ_KEY, u64(frontier.size))
    for size, _ in list(tx.iter_checkpoints()):
        tx.raw_delete("checkpoints", u64(size))


def test_an_untouched_log_verifies(copy) -> None:
    state, cp_file = copy
    result = verify(state, "--checkpoint", str(cp_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "log intact" in result.stdout


def test_a_flipped_bit_is_detected(copy) -> None:
    state, cp_file = copy
    raw = bytearray(record(state, 5))
    raw[raw.index(b'"ino":') + 6] ^= 0x01  # a digit becomes another digit: still valid JSON
    edit(state, lambda tx: tx.raw_put("audit", u64(5), bytes(raw)))
    result = verify(state)
    assert result.returncode == 1
    assert "TAMPERED checkpoint" in result.stdout and "root differs" in result.stdout


def test_a_deleted_record_is_detected(copy) -> None:
    state, _ = copy
    edit(state, lambda tx: tx.raw_delete("audit", u64(7)))
    result = verify(state)
    assert result.returncode == 1
    assert "seq 7: missing" in result.stdout


def test_two_swapped_records_are_detected(copy) -> None:
    state, _ = copy
    a, b = record(state, 3), record(state, 4)

    def swap(tx) -> None:
        tx.raw_put("audit", u64(3), b)
        tx.raw_put("audit", u64(4), a)

    edit(state, swap)
    result = verify(state)
    assert result.returncode == 1
    assert "seq 3: record says seq 4" in result.stdout


def test_a_truncated_tail_is_detected_against_an_offhost_checkpoint(copy) -> None:
    state, cp_file = copy
    size = int(cp_file.read_text().splitlines()[1])

    def truncate(tx) -> None:
        for seq in range(size - 3, size + 100):
            tx.raw_delete("audit", u64(seq)) if tx.get_record(seq) else None
        rebuild_tree_head(tx)

    edit(state, truncate)
    assert verify(state).returncode == 0  # the rewrite is self-consistent...
    result = verify(state, "--checkpoint", str(cp_file))
    assert result.returncode == 1  # ...but not with what was kept elsewhere
    assert "truncated" in result.stdout


def test_a_rewritten_history_is_detected_by_the_consistency_proof(copy) -> None:
    state, cp_file = copy
    raw = record(state, 2).replace(b'"result":"ok"', b'"result":"EPERM"')

    def rewrite(tx) -> None:
        tx.raw_put("audit", u64(2), raw)
        rebuild_tree_head(tx)

    edit(state, rewrite)
    result = verify(state, "--checkpoint", str(cp_file))
    assert result.returncode == 1
    assert "not consistent" in result.stdout


@pytest.mark.parametrize("field", ["root", "size"])
def test_a_checkpoint_with_a_changed_field_is_rejected(copy, field: str) -> None:
    state, cp_file = copy
    lines = cp_file.read_text().split("\n")
    if field == "size":
        lines[1] = str(int(lines[1]) - 1)
    else:
        lines[2] = ("A" if lines[2][0] != "A" else "B") + lines[2][1:]
    cp_file.write_text("\n".join(lines))
    result = verify(state, "--checkpoint", str(cp_file))
    assert result.returncode == 1
    assert "signature" in result.stdout


def test_a_checkpoint_signed_by_another_key_is_rejected(copy) -> None:
    state, cp_file = copy
    real = Checkpoint.parse_body(cp_file.read_text().split("\n\n")[0] + "\n")
    other = SigningKey.generate(real.origin)  # same name, different key
    cp_file.write_text(sign_checkpoint(real, other))
    result = verify(state, "--checkpoint", str(cp_file))
    assert result.returncode == 1
    assert "no signature" in result.stdout


def test_a_stored_checkpoint_with_a_forged_signature_is_rejected(copy) -> None:
    state, _ = copy
    other = SigningKey.generate("worm-fs/other")

    def forge(tx) -> None:
        size, note = list(tx.iter_checkpoints())[-1]
        body = note.decode().split("\n\n")[0] + "\n"
        tx.put_checkpoint(size, sign_checkpoint(Checkpoint.parse_body(body), other).encode())

    edit(state, forge)
    assert verify(state).returncode == 1


def test_verify_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli("log", "verify", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("worm-fs: ") and "Traceback" not in result.stderr
    result = run_cli("log", "verify", str(tmp_path))
    assert result.returncode == 2
