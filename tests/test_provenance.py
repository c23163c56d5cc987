"""Seal receipts, environment fingerprints and signed manifests (the deployment gate)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Mount, run_cli, wait_sealed
from worm_fs.audit.checkpoint import SigningKey


def test_provenance_names_the_writing_process(mnt: Mount) -> None:
    script = "import os, sys; open(sys.argv[1], 'wb').write(b'x' * 10); print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", script, str(mnt.path / "out.bin"), "tag-42"],
                          capture_output=True, text=True, check=True)
    wait_sealed(mnt.path / "out.bin")
    prov = json.loads(os.getxattr(mnt.path / "out.bin", "user.worm.provenance"))
    assert prov["pid"] == int(proc.stdout)
    assert prov["cmdline"][0] == sys.executable and prov["cmdline"][-1] == "tag-42"
    assert prov["uid"] == os.getuid() and prov["host"] and prov["sealed_at"].endswith("Z")
    assert prov["size"] == 10 and len(prov["sha256"]) == 64
    records = [json.loads(line) for line in
               run_cli("log", "show", str(mnt.path), "--json").stdout.splitlines()]
    seal = next(r for r in records if r["seq"] == prov["seal_seq"])
    assert seal["op"] == "seal" and seal["path"] == "/out.bin"
    stat = json.loads(run_cli("stat", str(mnt.path / "out.bin"), "--json").stdout)
    assert stat["provenance"]["seal_seq"] == prov["seal_seq"]


def test_seal_env_writes_a_sealed_fingerprint(mnt: Mount) -> None:
    result = run_cli("seal-env", str(mnt.path / "environment.json"), "--label", "run-7",
                     "--json", check=True)
    out = json.loads(result.stdout)
    data = json.loads((mnt.path / "environment.json").read_text())
    assert data["label"] == "run-7" and data["python"]["version"]
    assert "trio" in {k.lower() for k in data["packages"]}
    assert os.getxattr(mnt.path / "environment.json", "user.worm.state") == b"sealed"
    assert out["sha256"] == os.getxattr(mnt.path / "environment.json",
                                        "user.worm.sha256").decode()
    again = run_cli("seal-env", str(mnt.path / "environment.json"))
    assert again.returncode == 2 and "exists already" in again.stderr


@pytest.fixture
def gate(mnt: Mount, tmp_path: Path) -> tuple[Mount, Path, Path, str]:
    """A sealed model tree, its manifest, a cp -a copy and the store's verifier key."""
    tree = mnt.path / "model-v1"
    (tree / "shards").mkdir(parents=True)
    (tree / "config.json").write_text('{"layers": 2}')
    for i in range(3):
        (tree / "shards" / f"{i}.safetensors").write_bytes(os.urandom(200_000))
    for p in tree.rglob("*"):
        if p.is_file():
            wait_sealed(p)
    manifest = tmp_path / "model-v1.manifest.json"
    run_cli("manifest", "create", str(tree), "-o", str(manifest), check=True)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    pubkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
    return mnt, manifest, copy, pubkey


def test_a_manifest_verifies_on_the_mount_and_on_a_copy(gate) -> None:
    mnt, manifest, copy, pubkey = gate
    envelope = json.loads(manifest.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert {s["name"] for s in statement["subject"]} == {
        "config.json", "shards/0.safetensors", "shards/1.safetensors", "shards/2.safetensors"}
    on_mount = run_cli("manifest", "verify", str(manifest), str(mnt.path / "model-v1"))
    assert on_mount.returncode == 0, on_mount.stdout + on_mount.stderr
    off_host = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert off_host.returncode == 0, off_host.stdout + off_host.stderr
    assert "4 of 4 file(s) match" in off_host.stdout


def test_a_copy_without_a_key_is_a_usage_error(gate) -> None:
    _, manifest, copy, _ = gate
    result = run_cli("manifest", "verify", str(manifest), str(copy))
    assert result.returncode == 2 and "--pubkey" in result.stderr


@pytest.mark.parametrize("damage, message", [
    ("changed", "changed: shards/1.safetensors"),
    ("extra", "extra: shards/3.safetensors"),
    ("missing", "missing: config.json"),
    ("extra link", "extra link: shards/3.safetensors -> 0.safetensors"),
])
def test_tampered_copies_are_detected(gate, damage: str, message: str) -> None:
    _, manifest, copy, pubkey = gate
    if damage == "changed":
        data = bytearray((copy / "shards" / "1.safetensors").read_bytes())
        data[1000] ^= 1
        os.chmod(copy / "shards" / "1.safetensors", 0o644)
        (copy / "shards" / "1.safetensors").write_bytes(bytes(data))
    elif damage == "extra":
        (copy / "shards" / "3.safetensors").write_bytes(b"smuggled")
    elif damage == "extra link":  # the gate's tree has no links: its manifest says so
        os.symlink("0.safetensors", copy / "shards" / "3.safetensors")
    else:
        (copy / "config.json").unlink()
    result = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert result.returncode == 1
    assert message in result.stdout


def test_a_forged_signature_is_detected(gate) -> None:
    _, manifest, copy, pubkey = gate
    envelope = json.loads(manifest.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64  # swap in another artifact
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    manifest.write_text(json.dumps(envelope))
    result = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert result.returncode == 1 and "bad signature" in result.stdout


def test_a_manifest_from_another_stores_key_is_rejected(gate, tmp_path: Path) -> None:
    from worm_fs.manifest import build, scan_sealed_tree, sign

    mnt, _, copy, pubkey = gate
    other = SigningKey.generate("worm-fs/0123456789abcdef")
    tree = scan_sealed_tree(mnt.path / "model-v1")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(sign(build(tree, "", other.name), other)))
    result = run_cli("manifest", "verify", str(forged), str(copy), "--pubkey", pubkey)
    assert result.returncode == 1 and "not signed by" in result.stdout


def test_manifest_create_refuses_unsealed_files(mnt: Mount) -> None:
    (mnt.path / "run").mkdir()
    (mnt.path / "run" / "done.bin").write_bytes(b"d")
    with open(mnt.path / "run" / "partial.bin", "wb") as f:
        f.write(b"p")
        f.flush()
        result = run_cli("manifest", "create", str(mnt.path / "run"))
    assert result.returncode == 2
    assert "partial.bin (writing)" in result.stderr and "Traceback" not in result.stderr


def _statement(manifest: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(manifest.read_text())["payload"]))


@pytest.fixture
def linked_gate(mnt: Mount, tmp_path: Path) -> tuple[Mount, Path, Path, str]:
    """A sealed run with links inside it (to a file, to a directory), its manifest, a
    cp -a copy and the store's verifier key."""
    tree = mnt.path / "run-7"
    (tree / "shards").mkdir(parents=True)
    (tree / "config.json").write_text('{"layers": 2}')
    (tree / "shards" / "0.safetensors").write_bytes(os.urandom(100_000))
    os.symlink("shards/0.safetensors", tree / "model.safetensors")
    os.symlink("shards", tree / "weights")
    wait_sealed(tree / "config.json")
    wait_sealed(tree / "shards" / "0.safetensors")
    manifest = tmp_path / "run-7.manifest.json"
    run_cli("manifest", "create", str(tree), "-o", str(manifest), check=True)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    pubkey = run_cli("log", "pubkey", str(mnt.path), check=True).stdout.strip()
    return mnt, manifest, copy, pubkey


def test_links_inside_the_tree_are_signed_by_their_targets(linked_gate) -> None:
    mnt, manifest, copy, pubkey = linked_gate
    statement = _statement(manifest)
    assert statement["predicateType"] == "urn:worm-fs:seal-manifest:v2"
    assert statement["predicate"]["links"] == [
        {"path": "model.safetensors", "target": "shards/0.safetensors", "covered": True},
        {"path": "weights", "target": "shards", "covered": True}]
    on_mount = run_cli("manifest", "verify", str(manifest), str(mnt.path / "run-7"))
    assert on_mount.returncode == 0, on_mount.stdout + on_mount.stderr
    off_host = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert off_host.returncode == 0, off_host.stdout + off_host.stderr
    assert "2 of 2 file(s) and 2 of 2 symlink(s) match" in off_host.stdout
    assert "WARNING" not in off_host.stdout


def _replace_with_link(path: Path, target: str) -> None:
    path.unlink()
    os.symlink(target, path)


@pytest.mark.parametrize("damage, message", [
    ("retarget", "changed link: model.safetensors -> config.json "
                 "(signed: shards/0.safetensors)"),
    ("missing", "missing link: weights"),
    ("extra", "extra link: shards/1.safetensors -> /srv/evil.safetensors"),
    ("file to link", "changed: config.json (signed as a file, now a link -> /etc/cfg)"),
    ("link to file", "changed: model.safetensors (signed as a link -> shards/0.safetensors, "
                     "now a file)"),
])
def test_changed_missing_and_extra_links_are_detected(linked_gate, damage: str,
                                                      message: str) -> None:
    _, manifest, copy, pubkey = linked_gate
    if damage == "retarget":
        _replace_with_link(copy / "model.safetensors", "config.json")
    elif damage == "missing":
        (copy / "weights").unlink()
    elif damage == "extra":
        os.symlink("/srv/evil.safetensors", copy / "shards" / "1.safetensors")
    elif damage == "file to link":
        _replace_with_link(copy / "config.json", "/etc/cfg")
    else:
        data = (copy / "model.safetensors").read_bytes()  # cp -rL: the same bytes
        (copy / "model.safetensors").unlink()
        (copy / "model.safetensors").write_bytes(data)
    result = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED {message}\n" in result.stdout
    as_json = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey,
                      "--json")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["problems"] == [message] and not data["ok"]


@pytest.fixture
def run_with_external_link(mnt: Mount, tmp_path: Path) -> tuple[Path, Path]:
    """A sealed run whose model.safetensors links to a world-writable file outside."""
    scratch = tmp_path / "scratch.safetensors"
    scratch.write_bytes(b"weights v1")
    scratch.chmod(0o666)
    tree = mnt.path / "run-8"
    tree.mkdir()
    (tree / "config.json").write_text("{}")
    os.symlink(str(scratch), tree / "model.safetensors")
    wait_sealed(tree / "config.json")
    return tree, scratch


def test_manifest_create_refuses_a_link_that_leaves_the_tree(run_with_external_link,
                                                             tmp_path: Path) -> None:
    tree, scratch = run_with_external_link
    os.symlink("../run-7/config.json", tree / "sibling.json")  # relative, but above PATH
    out = tmp_path / "run-8.manifest.json"
    result = run_cli("manifest", "create", str(tree), "-o", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert f"model.safetensors -> {scratch}" in result.stderr
    assert "sibling.json -> ../run-7/config.json" in result.stderr
    assert "--allow-external-links" in result.stderr
    assert not out.exists()


def test_an_external_link_is_signed_only_on_request_and_marked_not_covered(
        run_with_external_link, tmp_path: Path) -> None:
    tree, scratch = run_with_external_link
    manifest = tmp_path / "run-8.manifest.json"
    created = run_cli("manifest", "create", str(tree), "-o", str(manifest),
                      "--allow-external-links")
    assert created.returncode == 0, created.stderr
    assert "model.safetensors" in created.stderr and "not covered" in created.stderr
    assert _statement(manifest)["predicate"]["links"] == [
        {"path": "model.safetensors", "target": str(scratch), "covered": False}]
    result = run_cli("manifest", "verify", str(manifest), str(tree), "--json")
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["warnings"] == [
        f"link model.safetensors -> {scratch} points outside the tree: its target's "
        "content is not covered by the manifest"]
    human = run_cli("manifest", "verify", str(manifest), str(tree))
    assert human.returncode == 0 and human.stdout.startswith("WARNING link model.safetensors")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    _replace_with_link(copy / "model.safetensors", str(tmp_path / "other.safetensors"))
    pubkey = run_cli("log", "pubkey", str(tree), check=True).stdout.strip()
    moved = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert moved.returncode == 1  # the target string itself is still checked
    assert f"FAILED changed link: model.safetensors -> {tmp_path / 'other.safetensors'}" \
        in moved.stdout


def test_undecodable_link_names_survive_create_and_verify(mnt: Mount, tmp_path: Path) -> None:
    tree = mnt.path / "run-9"
    tree.mkdir()
    (tree / "f.bin").write_bytes(b"f")
    wait_sealed(tree / "f.bin")
    os.symlink(b"f.bin\xff", os.fsencode(tree) + b"/l\xfe")
    manifest = tmp_path / "run-9.manifest.json"
    run_cli("manifest", "create", str(tree), "-o", str(manifest), check=True)
    link = _statement(manifest)["predicate"]["links"][0]
    assert os.fsencode(link["path"]) == b"l\xfe" and os.fsencode(link["target"]) == b"f.bin\xff"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    pubkey = run_cli("log", "pubkey", str(tree), check=True).stdout.strip()
    ok = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    os.unlink(os.fsencode(copy) + b"/l\xfe")
    os.symlink(b"f.bin\xfd", os.fsencode(copy) + b"/l\xfe")
    bad = run_cli("manifest", "verify", str(manifest), str(copy), "--pubkey", pubkey)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "FAILED changed link: l\\udcfe -> f.bin\\udcfd (signed: f.bin\\udcff)" in bad.stdout
