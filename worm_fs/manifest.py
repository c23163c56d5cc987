"""Signed manifests of sealed trees: the deployment gate.

A manifest is an in-toto attestation: a Statement (v1) whose subjects are the files
(relative path and SHA-256) and whose predicate adds each file's size, seal time and
seal sequence number plus a signed checkpoint of the audit log covering those seals.
It is wrapped in a DSSE envelope signed with the store's Ed25519 key, so existing
supply-chain tools can read it, and it can be checked with the key that
``worm-fs log pubkey`` prints, on any host, with no daemon.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worm_fs.audit.checkpoint import CheckpointError, SigningKey, VerifierKey, open_checkpoint
from worm_fs.errors import EXIT_CHECK_FAILED, EXIT_USAGE, WormError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:worm-fs:seal-manifest:v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class ManifestError(WormError):
    """The manifest is not valid."""

    exit_code = EXIT_CHECK_FAILED


class UnsealedFiles(WormError):
    """The tree holds files that are not sealed."""

    exit_code = EXIT_USAGE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(verifier: VerifierKey) -> str:
    return f"{verifier.name}+{verifier.key_hash.hex()}"


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    sha256: str
    sealed_at: str
    seal_seq: int


def scan_sealed_tree(root: Path) -> list[Entry]:
    """Every file below ``root`` (in a worm-fs mount) with its seal facts.

    Raises UnsealedFiles listing every file that is being written or quarantined.
    """
    entries: list[Entry] = []
    unsealed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                continue
            state = os.getxattr(path, "user.worm.state").decode()
            if state != "sealed":
                unsealed.append(f"{rel} ({state})")
                continue
            prov = json.loads(os.getxattr(path, "user.worm.provenance"))
            entries.append(Entry(path=rel, size=path.stat().st_size,
                                 sha256=os.getxattr(path, "user.worm.sha256").decode(),
                                 sealed_at=prov["sealed_at"], seal_seq=int(prov["seal_seq"])))
    if unsealed:
        raise UnsealedFiles("refusing to sign a tree with unsealed files: " +
                            ", ".join(unsealed))
    return entries


def build(entries: list[Entry], checkpoint_note: str, origin: str) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": e.path, "digest": {"sha256": e.sha256}} for e in entries],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "store": origin,
            "files": [{"path": e.path, "size": e.size, "sealed_at": e.sealed_at,
                       "seal_seq": e.seal_seq} for e in entries],
            "checkpoint": checkpoint_note,
        },
    }


def sign(statement: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(key.verifier()),
                        "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode()}],
    }


def open_envelope(envelope: dict[str, Any], verifier: VerifierKey) -> dict[str, Any]:
    """The statement inside ``envelope`` if ``verifier`` signed it; else ManifestError."""
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = envelope["payloadType"]
        signatures = envelope["signatures"]
    except (KeyError, TypeError, ValueError):
        raise ManifestError("not a DSSE envelope") from None
    if payload_type != PAYLOAD_TYPE:
        raise ManifestError(f"unexpected payload type {payload_type!r}")
    ours = [s for s in signatures if isinstance(s, dict) and s.get("keyid") == key_id(verifier)]
    if not ours:
        raise ManifestError(f"not signed by {key_id(verifier)} (signed by: " +
                            ", ".join(str(s.get("keyid")) for s in signatures
                                      if isinstance(s, dict)) + ")")
    for s in ours:
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (KeyError, ValueError):
            continue
        if verifier.verify(pae(payload_type, payload), sig):
            break
    else:
        raise ManifestError("bad signature: the manifest was altered or forged")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ManifestError("the signed payload is not JSON") from None
    if statement.get("_type") != STATEMENT_TYPE or \
            statement.get("predicateType") != PREDICATE_TYPE:
        raise ManifestError("not a worm-fs seal manifest")
    return statement


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def compare(statement: dict[str, Any], root: Path) -> Comparison:
    """Check ``root`` against the statement's subjects, hashing every file."""
    want = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    have: set[str] = set()
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                have.add(path.relative_to(root).as_posix())
    result = Comparison()
    result.missing = sorted(set(want) - have)
    result.extra = sorted(have - set(want))
    for rel in sorted(set(want) & have):
        result.checked += 1
        if sha256_file(root / rel) != want[rel]:
            result.changed.append(rel)
    return result


def check_checkpoint(statement: dict[str, Any], verifier: VerifierKey) -> str | None:
    """Why the embedded checkpoint does not cover the seals, or None."""
    predicate = statement.get("predicate", {})
    try:
        cp = open_checkpoint(predicate.get("checkpoint", ""), verifier)
    except CheckpointError as exc:
        return f"checkpoint: {exc}"
    seqs = [int(f["seal_seq"]) for f in predicate.get("files", [])]
    if seqs and cp.size <= max(seqs):
        return f"the checkpoint (size {cp.size}) does not cover seal seq {max(seqs)}"
    return None
