"""Witnesses cosign checkpoints through a real mount, against a tlog-witness on loopback."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for
from tests.witness_server import WitnessServer
from worm_fs.audit.checkpoint import (
    ALG_COSIGNATURE,
    CheckpointError,
    SigningKey,
    VerifierKey,
    add_signatures,
    cosign,
    sign_note,
    verify_cosignature,
)
from worm_fs.audit.witness import Witness, request_body
from worm_fs.store import u64


def witness_stats(mnt) -> dict:
    data = json.loads(run_cli("stats", str(mnt.path), "--json", check=True).stdout)
    (w,) = data["witnesses"]
    return w


@pytest.fixture
def witness(tmp_path: Path):
    server = WitnessServer(tmp_path / "witness-state.json").start()
    yield server
    server.stop()


@pytest.fixture
def witnessed(mount_factory, witness):
    return mount_witnessed(mount_factory, witness)


def mount_witnessed(mount_factory, witness: WitnessServer):
    """A mount whose log the witness knows, asking it to cosign every second."""
    mnt = mount_factory("--checkpoint-seconds", "1")
    vkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
    origin = run_cli("log", "checkpoint", str(mnt.path), check=True).stdout.split("\n")[0]
    witness.witness_log(origin, vkey)
    mnt.options += ["--witness", f"{witness.url}={witness.vkey}"]
    mnt.restart()
    return mnt


def write_files(mnt, n: int, prefix: str = "f") -> None:
    for i in range(n):
        (mnt.path / f"{prefix}{i}").write_bytes(b"x" * 100)


def stored_notes(mnt) -> dict[int, str]:
    store = mnt.store()
    try:
        with store.read() as rt:
            return {size: note.decode() for size, note in rt.iter_checkpoints()}
    finally:
        store.close()


def test_a_cosignature_line_verifies_only_with_its_witness_key_and_unchanged_body() -> None:
    log_key = SigningKey.generate("example.com/log")
    witness_key = SigningKey.generate("example.com/witness")
    note = sign_note("example.com/log\n3\n" + "A" * 43 + "=\n", log_key)
    body = note.split("\n\n")[0] + "\n"
    cosigned = add_signatures(note, cosign(body, witness_key, 1_700_000_000))
    vkey = VerifierKey(witness_key.name, witness_key.public_bytes(), ALG_COSIGNATURE)
    assert verify_cosignature(cosigned, vkey) == 1_700_000_000
    assert str(VerifierKey.parse(str(vkey), algorithms=(ALG_COSIGNATURE,))) == str(vkey)
    with pytest.raises(ValueError, match="algorithm 0x04"):
        VerifierKey.parse(str(vkey))  # a witness key is no log key
    assert verify_cosignature(note, vkey) is None
    with pytest.raises(CheckpointError, match="bad signature"):
        verify_cosignature(cosigned.replace("\n3\n", "\n4\n"), vkey)


def test_new_checkpoints_get_cosigned_and_log_verify_requires_the_cosignatures(
        witnessed, witness) -> None:
    write_files(witnessed, 5)
    w = wait_for(lambda: (s := witness_stats(witnessed))["lag_records"] == 0
                 and s["cosigned_size"] > 0 and s)
    assert w["errors"] == 0 and w["url"] == witness.url
    size, root = witness.state()
    assert size == w["cosigned_size"]
    note = stored_notes(witnessed)[size]
    assert f"\u2014 {witness.name} " in note  # the cosigned note is what is stored
    path = str(witnessed.path)
    ok = run_cli("log", "verify", path, "--witness", witness.vkey, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)["witnesses"]
    assert report["witnessed_size"] >= size and report["cosigners"] == [witness.name]

    other = WitnessServer(Path(witness.state_file.parent / "other.json"), name="other/w2")
    missing = run_cli("log", "verify", path, "--witness", witness.vkey, other.vkey)
    assert missing.returncode == 1
    assert "cosigned by 2 of the 2" in missing.stdout
    assert run_cli("log", "verify", path, "--witness", witness.vkey, other.vkey,
                   "--quorum", "1").returncode == 0
    bad = run_cli("log", "verify", path, "--witness", witness.vkey, "--quorum", "2")
    assert bad.returncode == 2 and "--quorum" in bad.stderr and "Traceback" not in bad.stderr

    # A cosignature changed by one byte fails, with the exit code of a failed check.
    witnessed.stop()
    store = witnessed.store(write=True)
    try:
        with store.write() as tx:
            kept = tx.get_checkpoint(size).decode()
            text, _, sigs = kept.rpartition("\n\n")
            line = [s for s in sigs.splitlines() if s.startswith(f"\u2014 {witness.name} ")][0]
            name, b64 = line.rsplit(" ", 1)
            flipped = b64[:20] + ("A" if b64[20] != "A" else "B") + b64[21:]
            tx.raw_put("checkpoints", u64(size), kept.replace(line, f"{name} {flipped}")
                       .encode())
    finally:
        store.close()
    witnessed.start()
    tampered = run_cli("log", "verify", path, "--witness", witness.vkey, "--quorum", "1")
    assert tampered.returncode == 1
    assert "bad signature" in tampered.stdout


def test_a_witness_down_never_blocks_the_store_and_it_catches_up_when_back(
        witnessed, witness) -> None:
    write_files(witnessed, 2)
    wait_for(lambda: witness_stats(witnessed)["lag_records"] == 0
             and witness_stats(witnessed)["cosigned_size"] > 0)
    witness.stop()
    started = time.monotonic()
    write_files(witnessed, 20, prefix="down")
    assert time.monotonic() - started < 5  # writers do not wait for the witness
    w = wait_for(lambda: (s := witness_stats(witnessed))["errors"] > 0
                 and s["lag_records"] > 0 and s)
    assert "cannot reach" in w["last_error"]
    time.sleep(1.5)
    later = witness_stats(witnessed)
    assert later["lag_seconds"] >= 1.0
    prom = run_cli("stats", str(witnessed.path), "--prometheus", check=True).stdout
    assert "worm_fs_witness_lag_records{" in prom and "worm_fs_witness_failing{" in prom
    assert any(line.startswith("worm_fs_witness_failing{") and line.endswith(" 1")
               for line in prom.splitlines())

    witness.start()  # the same port
    wait_for(lambda: witness_stats(witnessed)["lag_records"] == 0, timeout=30)
    assert witness.state()[0] == max(stored_notes(witnessed))


def test_a_witness_that_cosigned_a_larger_size_already_is_asked_again_from_it(
        mount_factory, witness) -> None:
    mnt = mount_factory("--checkpoint-seconds", "1")
    write_files(mnt, 3)
    vkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
    note = run_cli("log", "checkpoint", str(mnt.path), check=True).stdout
    witness.witness_log(note.split("\n")[0], vkey)
    # Someone else (another copy of the client) had this checkpoint cosigned already.
    request = urllib.request.Request(witness.url + "/add-checkpoint",
                                     data=request_body(0, [], note), method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    held = witness.state()[0]
    assert held > 0
    mnt.options += ["--witness", f"{witness.url}={witness.vkey}"]
    mnt.restart()
    write_files(mnt, 3, prefix="g")
    w = wait_for(lambda: (s := witness_stats(mnt))["cosigned_size"] > held
                 and s["lag_records"] == 0 and s)
    assert 409 in witness.requests and witness.requests[-1] == 200
    assert w["errors"] == 0


def test_a_witness_holding_a_size_beyond_our_log_is_reported_and_the_store_works_on(
        witnessed, witness) -> None:
    witness.set_state(10**9, "A" * 43 + "=")
    write_files(witnessed, 3)
    w = wait_for(lambda: (s := witness_stats(witnessed))["errors"] > 0 and s)
    assert "rewound or forked" in w["last_error"]
    (witnessed.path / "still-works").write_bytes(b"ok")
    assert (witnessed.path / "still-works").read_bytes() == b"ok"


def test_a_witness_with_another_history_at_a_size_rejects_our_proof_and_it_is_counted(
        witnessed, witness) -> None:
    write_files(witnessed, 3)
    witness.set_state(2, "A" * 43 + "=")  # size 2 with a root our log never had
    w = wait_for(lambda: (s := witness_stats(witnessed))["errors"] > 0 and s)
    assert "422" in w["last_error"] and "consistency proof" in w["last_error"]
    assert w["cosigned_size"] < max(stored_notes(witnessed))


def test_witness_specs_are_checked_before_mounting(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    result = run_cli("mount", str(tmp_path / "s"), str(tmp_path / "m"),
                     "--witness", "http://127.0.0.1:1=not-a-key")
    assert result.returncode == 2 and "bad --witness" in result.stderr
    assert "Traceback" not in result.stderr
    good = WitnessServer(tmp_path / "w.json").vkey
    assert Witness.parse(f"http://127.0.0.1:1/w/={good}").url == "http://127.0.0.1:1/w"


def test_witnesses_come_from_repeated_flags_or_a_config_list(tmp_path: Path) -> None:
    import argparse

    from worm_fs.config import add_mount_flags, as_flags, resolve
    from worm_fs.errors import UsageError

    good = WitnessServer(tmp_path / "w.json").vkey
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", nargs="?")
    parser.add_argument("mountpoint", nargs="?")
    parser.add_argument("--config")
    add_mount_flags(parser)
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "/s"\nmountpoint = "/m"\n'
                      f'witness = ["http://a={good}", "http://b={good}"]\n')
    args = resolve(parser.parse_args(["--config", str(config)]))
    assert args.witness == [f"http://a={good}", f"http://b={good}"]
    flags = as_flags(args)
    assert flags.count("--witness") == 2
    again = resolve(parser.parse_args(["/s", "/m", *flags]))
    assert again.witness == args.witness
    config.write_text('state_dir = "/s"\nmountpoint = "/m"\nwitness = [1]\n')
    with pytest.raises(UsageError, match="list of strings"):
        resolve(parser.parse_args(["--config", str(config)]))
