"""Signed manifests of sealed trees: the deployment gate.

A manifest is an in-toto attestation: a Statement (v1) whose subjects are the files
(relative path and SHA-256) and whose predicate adds each file's size, seal time and
seal sequence number, each symlink's target, plus a signed checkpoint of the audit log
covering those seals. It is wrapped in a DSSE envelope signed with the store's Ed25519
key, so existing supply-chain tools can read it, and it can be checked with the key
that ``worm-fs log pubkey`` prints, on any host, with no daemon.

What a manifest covers: every regular file by its SHA-256, every symlink by its target
(the string, not what it points at). A link whose target resolves inside the tree is
covered through the entry it reaches; a link that leaves the tree is signed only with
``allow_external_links`` and is marked ``"covered": false``. Directories are implied by
the paths. Paths and targets are the names as Python's ``os`` functions give them
(undecodable bytes as lone surrogates, ``\\udcXX`` in the JSON), so they round-trip
to the same bytes.

Predicate types: ``v1`` lists files only and means "no symlinks"; ``v2`` adds
``links``. ``build`` writes ``v1`` for a tree without symlinks (the statement is the
one earlier versions wrote) and ``v2`` otherwise, so a verifier that predates links
refuses a manifest with links instead of ignoring them; ``open_envelope`` accepts both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worm_fs.audit.checkpoint import CheckpointError, SigningKey, VerifierKey, open_checkpoint
from worm_fs.errors import EXIT_CHECK_FAILED, EXIT_USAGE, WormError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE_V1 = "urn:worm-fs:seal-manifest:v1"  # files only: the tree has no links
PREDICATE_TYPE = "urn:worm-fs:seal-manifest:v2"  # files and links
PREDICATE_TYPES = (PREDICATE_TYPE_V1, PREDICATE_TYPE)
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class ManifestError(WormError):
    """The manifest is not valid."""

    exit_code = EXIT_CHECK_FAILED


class UnsealedFiles(WormError):
    """The tree holds files that are not sealed."""

    exit_code = EXIT_USAGE


class ExternalLinks(WormError):
    """The tree holds symlinks that point outside it."""

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


@dataclass(frozen=True)
class Link:
    path: str
    target: str
    covered: bool  # False: the target leaves the tree, what it reaches is not signed


@dataclass(frozen=True)
class Tree:
    files: list[Entry]
    links: list[Link]


def walk(root: Path) -> tuple[list[str], dict[str, str]]:
    """The files below ``root`` and its symlinks with their targets, by relative path.

    Symlinks are never followed; one to a directory is a link like any other.
    """
    files: list[str] = []
    links: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:  # os.walk lists a link to a directory in dirnames
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                links[rel] = os.readlink(path)
            elif name in filenames:
                files.append(rel)
    return sorted(files), dict(sorted(links.items()))


#: Links followed to resolve one link, as the kernel's limit before ELOOP.
MAX_FOLLOWS = 40


def leaves_tree(link: str, links: Mapping[str, str]) -> bool:
    """Whether the symlink ``link`` (a path relative to the root) reaches outside the root.

    Resolved on paper, never on the filesystem: an absolute target leaves; ``..`` above
    the root leaves; a link of the tree met on the way (``links``: relative path to
    target) is followed the same way, and ``..`` after it goes up from where it led. A
    name that does not exist reaches nothing and stays inside. More than MAX_FOLLOWS
    links (a loop, say) counts as leaving: what it reaches is not known.
    """
    follows = 0

    def resolve(start: list[str], target: str) -> list[str] | None:
        nonlocal follows
        if target.startswith("/"):
            return None
        parts = list(start)
        for name in target.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                if not parts:
                    return None
                parts.pop()
                continue
            parts.append(name)
            inner = links.get("/".join(parts))
            if inner is not None:
                follows += 1
                if follows > MAX_FOLLOWS:
                    return None
                reached = resolve(parts[:-1], inner)
                if reached is None:
                    return None
                parts = reached
        return parts

    return resolve(link.split("/")[:-1], links[link]) is None


def scan_sealed_tree(root: Path, *, allow_external_links: bool = False) -> Tree:
    """Every file below ``root`` (in a worm-fs mount) with its seal facts, and every link.

    Raises UnsealedFiles listing every file that is being written or quarantined, then
    ExternalLinks listing every link that leaves the tree unless ``allow_external_links``
    (the links are then marked not covered).
    """
    files, targets = walk(root)
    entries: list[Entry] = []
    unsealed: list[str] = []
    for rel in files:
        path = root / rel
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
    links = [Link(path=rel, target=target, covered=not leaves_tree(rel, targets))
             for rel, target in targets.items()]
    external = [f"{k.path} -> {k.target}" for k in links if not k.covered]
    if external and not allow_external_links:
        raise ExternalLinks("refusing to sign symlinks that point outside the tree "
                            "(--allow-external-links signs them as not covered): " +
                            ", ".join(external))
    return Tree(files=entries, links=links)


def build(tree: Tree, checkpoint_note: str, origin: str) -> dict[str, Any]:
    predicate: dict[str, Any] = {
        "store": origin,
        "files": [{"path": e.path, "size": e.size, "sealed_at": e.sealed_at,
                   "seal_seq": e.seal_seq} for e in tree.files],
        "checkpoint": checkpoint_note,
    }
    if tree.links:
        predicate["links"] = [{"path": k.path, "target": k.target, "covered": k.covered}
                              for k in tree.links]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": e.path, "digest": {"sha256": e.sha256}} for e in tree.files],
        "predicateType": PREDICATE_TYPE if tree.links else PREDICATE_TYPE_V1,
        "predicate": predicate,
    }


def signed_links(statement: dict[str, Any]) -> list[Link]:
    """The links a statement signs (none for ``v1``: it was made of a tree without)."""
    return [Link(path=k["path"], target=k["target"], covered=bool(k["covered"]))
            for k in statement.get("predicate", {}).get("links", [])]


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
            statement.get("predicateType") not in PREDICATE_TYPES:
        raise ManifestError("not a worm-fs seal manifest")
    return statement


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    checked: int = 0
    missing_links: list[str] = field(default_factory=list)
    extra_links: list[tuple[str, str]] = field(default_factory=list)  # path, target found
    retargeted: list[tuple[Link, str]] = field(default_factory=list)  # signed, target found
    now_links: list[tuple[str, str]] = field(default_factory=list)  # signed files found as links
    now_files: list[Link] = field(default_factory=list)  # signed links found as files
    links_checked: int = 0
    not_covered: list[Link] = field(default_factory=list)  # signed links leaving the tree

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.missing_links or
                    self.extra_links or self.retargeted or self.now_links or self.now_files)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def compare(statement: dict[str, Any], root: Path) -> Comparison:
    """Check ``root`` against the statement's subjects and links, hashing every file.

    A name that changed kind (file to link or back) is reported once, as such, not as
    missing and extra.
    """
    want = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    want_links = {k.path: k for k in signed_links(statement)}
    files, have_links = walk(root)
    have = set(files)
    result = Comparison()
    result.not_covered = [k for k in want_links.values() if not k.covered]
    result.now_links = [(rel, have_links[rel]) for rel in sorted(set(want) & set(have_links))]
    result.now_files = [want_links[rel] for rel in sorted(set(want_links) & have)]
    result.missing = sorted(set(want) - have - set(have_links))
    result.extra = sorted(have - set(want) - set(want_links))
    result.missing_links = sorted(set(want_links) - set(have_links) - have)
    result.extra_links = [(rel, have_links[rel])
                          for rel in sorted(set(have_links) - set(want_links) - set(want))]
    for rel in sorted(set(want) & have):
        result.checked += 1
        if sha256_file(root / rel) != want[rel]:
            result.changed.append(rel)
    for rel in sorted(set(want_links) & set(have_links)):
        result.links_checked += 1
        if have_links[rel] != want_links[rel].target:
            result.retargeted.append((want_links[rel], have_links[rel]))
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
