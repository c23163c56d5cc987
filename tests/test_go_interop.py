"""The audit log checked by Go's golang.org/x/mod/sumdb packages, built offline.

The verifier (tests/go/verifier.go) is built once per session from Debian's
``golang-go`` and ``golang-golang-x-mod-dev`` (scripts/setup installs them) in GOPATH
mode, with no network. It checks checkpoint signatures (``note.Open``), roots recomputed
from ``log show --raw`` (``tlog.RecordHash``, ``tlog.TreeHash``), inclusion proofs
(``tlog.CheckRecord``), consistency proofs (``tlog.CheckTree``) and C2SP
``cosignature/v1`` lines, and the test checks that it rejects tampered inputs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import WORM_FS, Mount, run_cli
from tests.test_witness import mount_witnessed
from tests.witness_server import WitnessServer

GO_SOURCE = Path(__file__).parent / "go" / "verifier.go"
GOPATH = Path("/usr/share/gocode")

#: Names nobody should have to care about: non-ASCII, emoji, bytes that are not
#: UTF-8, control characters, quotes and backslashes.
AWKWARD = ["caf\u00e9-\u00fc", "\U0001f600\U0001f680.bin", os.fsdecode(b"bad\xff\xfe"),
           "ctl\x01\x1b[31m\x7f", 'quo"te\\back', "\u202eevil", "tab\there"]


@pytest.fixture(scope="module")
def go_verifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None or not (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        pytest.fail("golang-go and golang-golang-x-mod-dev are needed: run scripts/setup")
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH),
           "GOCACHE": str(out / "cache"), "GOFLAGS": "", "GOPROXY": "off"}
    subprocess.run([go, "build", "-o", str(out / "verifier"), str(GO_SOURCE)], cwd=out,
                   env=env, check=True, capture_output=True, timeout=300)
    return out / "verifier"


def go(verifier: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(verifier), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def accepts(verifier: Path, *args: str | Path) -> None:
    result = go(verifier, *args)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout


def rejects(verifier: Path, *args: str | Path) -> None:
    result = go(verifier, *args)
    assert result.returncode == 1 and result.stdout.strip() != "ok", result.stdout


def witness_key(name: str) -> tuple[Ed25519PrivateKey, str]:
    """A test witness key and its C2SP verifier key (key type 0x04, cosignature/v1)."""
    private = Ed25519PrivateKey.generate()
    public = b"\x04" + private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(name.encode() + b"\n" + public).digest()[:4]
    return private, f"{name}+{key_id.hex()}+{base64.b64encode(public).decode()}"


def cosign(note: str, name: str, private: Ed25519PrivateKey, timestamp: int) -> str:
    """``note`` with a cosignature/v1 line added, made as c2sp.org/tlog-cosignature says."""
    body = note[: note.index("\n\n") + 1]
    public = b"\x04" + private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(name.encode() + b"\n" + public).digest()[:4]
    signature = private.sign(f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode())
    blob = key_id + timestamp.to_bytes(8, "big") + signature
    return note + f"\u2014 {name} {base64.b64encode(blob).decode()}\n"


def test_go_verifies_the_audit_log(mnt: Mount, go_verifier: Path, tmp_path: Path) -> None:
    v = go_verifier
    for name in AWKWARD[:4]:
        (mnt.path / name).write_bytes(name.encode("utf-8", "surrogateescape"))
    vkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
    old = tmp_path / "old.note"
    old.write_text(run_cli("log", "checkpoint", str(mnt.path), check=True).stdout)
    for name in AWKWARD[4:]:
        (mnt.path / name).write_bytes(b"x")
    new = tmp_path / "new.note"
    new.write_text(run_cli("log", "checkpoint", str(mnt.path), check=True).stdout)

    # Signatures.
    accepts(v, "note", vkey, new)
    bad = tmp_path / "bad.note"
    lines = new.read_text().split("\n")
    lines[1] = str(int(lines[1]) + 1)
    bad.write_text("\n".join(lines))
    rejects(v, "note", vkey, bad)

    # Roots from the raw bytes: every name above is in them, and one changed byte shows.
    raw = subprocess.run([*WORM_FS, "log", "show", str(mnt.path), "--raw"], check=True,
                         capture_output=True, timeout=60).stdout
    paths = {json.loads(line).get("path") for line in raw.splitlines()}
    assert all("/" + name in paths for name in AWKWARD)
    raw_file = tmp_path / "records"
    raw_file.write_bytes(raw)
    accepts(v, "roots", vkey, raw_file, old, new)
    raw_file.write_bytes(raw.replace(b"\\ud83d", b"\\ud83e", 1))
    rejects(v, "roots", vkey, raw_file, old, new)

    # Inclusion of the record of the emoji name.
    seq = next(json.loads(line)["seq"] for line in raw.splitlines()
               if json.loads(line).get("path") == "/" + AWKWARD[1])
    proof = run_cli("log", "prove", str(mnt.path), str(seq), check=True).stdout
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proof)
    accepts(v, "prove", vkey, proof_file)
    tampered = json.loads(proof)
    tampered["record"] = tampered["record"].replace("\\ud83d", "\\ud83e")
    proof_file.write_text(json.dumps(tampered))
    rejects(v, "prove", vkey, proof_file)

    # Consistency from the old checkpoint to the new one.
    old_size = int(old.read_text().split("\n")[1])
    new_size = int(new.read_text().split("\n")[1])
    cons = run_cli("log", "consistency", str(mnt.path), str(old_size), str(new_size),
                   "--json", check=True).stdout
    cons_file = tmp_path / "cons.json"
    cons_file.write_text(cons)
    accepts(v, "consistency", vkey, cons_file)
    tampered = json.loads(cons)
    assert tampered["proof"]
    tampered["proof"][0] = "00" * 32
    cons_file.write_text(json.dumps(tampered))
    rejects(v, "consistency", vkey, cons_file)

    # A witness cosignature (cosignature/v1) on the new checkpoint.
    private, wkey = witness_key("witness.example/w1")
    _, other = witness_key("witness.example/w1")
    cosigned = tmp_path / "cosigned.note"
    cosigned.write_text(cosign(new.read_text(), "witness.example/w1", private,
                               int(time.time())))
    accepts(v, "cosig", wkey, cosigned)
    accepts(v, "note", vkey, cosigned)  # the log's own signature still opens
    rejects(v, "cosig", other, cosigned)
    forged = cosigned.read_text().replace(new.read_text().split("\n")[1] + "\n",
                                          str(new_size + 1) + "\n", 1)
    cosigned.write_text(forged)
    rejects(v, "cosig", wkey, cosigned)


def test_go_checks_the_cosignature_a_real_witness_made(
        mount_factory, go_verifier: Path, tmp_path: Path) -> None:
    """The witness on loopback cosigns through the daemon's tlog-witness client; Go
    checks the stored cosigned note with the witness's key and refuses another key."""
    witness = WitnessServer(tmp_path / "witness-state.json").start()
    try:
        mnt = mount_witnessed(mount_factory, witness)
        vkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
        (mnt.path / AWKWARD[1]).write_bytes(b"model")
        deadline = time.monotonic() + 20
        while witness.state()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        size = witness.state()[0]
        assert size > 0, "the witness cosigned nothing within 20 s"
        note = tmp_path / "cosigned.note"
        note.write_text(_stored_note(mnt, size))
        accepts(go_verifier, "cosig", witness.vkey, note)
        accepts(go_verifier, "note", vkey, note)
        _, stranger = witness_key(witness.name)
        rejects(go_verifier, "cosig", stranger, note)
    finally:
        witness.stop()


def _stored_note(mnt: Mount, size: int) -> str:
    store = mnt.store()
    try:
        with store.read() as rt:
            return dict(rt.iter_checkpoints())[size].decode()
    finally:
        store.close()
