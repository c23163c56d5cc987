"""The audit log verifier.

It decodes every stored record to its canonical bytes (raw JSON values of older stores
and packed values alike, :mod:`worm_fs.store.records`), recomputes every leaf from
those bytes, checks that sequence numbers run 0, 1, 2, ... with no gap and that each
record is in its canonical form, rebuilds the tree, and checks it against

* the tree head the store keeps (size and root),
* every checkpoint kept in the store (signature with the store's key, and root),
* optionally checkpoints kept elsewhere (an RFC 9162 consistency proof from the
  checkpoint's tree to today's).

Anything that fails is a :class:`Problem` saying where. Records after the newest
checkpoint are the *unanchored tail*: intact as far as the tree goes, but a rewrite of
them by someone holding the key would not be detected until the next checkpoint that
is kept off the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from worm_fs.audit.checkpoint import Checkpoint, CheckpointError, VerifierKey, open_checkpoint
from worm_fs.audit.log import canonical, tree_head
from worm_fs.audit.merkle import (
    Frontier,
    consistency_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
)
from worm_fs.store import Store
from worm_fs.store.records import RecordFormatError, decode_record


@dataclass
class Problem:
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass
class LogReport:
    records: int = 0
    root: bytes = b""
    checkpoints: int = 0
    newest_checkpoint: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unanchored(self) -> int:
        return max(0, self.records - self.newest_checkpoint)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "records": self.records,
            "root": self.root.hex(),
            "checkpoints_checked": self.checkpoints,
            "newest_checkpoint_size": self.newest_checkpoint,
            "unanchored_records": self.unanchored,
            "problems": [str(p) for p in self.problems],
        }


def load_leaves(store: Store, report: LogReport) -> list[bytes]:
    """Leaf hashes of every stored record, noting continuity and encoding problems."""
    leaves: list[bytes] = []
    with store.read() as rt:
        for seq, value in rt.iter_stored_records():
            expected = len(leaves)
            if seq != expected:
                report.problems.append(Problem(
                    f"seq {expected}", f"missing: the next stored record is seq {seq}"
                ))
                # Keep hashing so later checks still say something useful.
            try:
                raw = decode_record(value)
            except RecordFormatError as exc:
                report.problems.append(Problem(f"seq {seq}", f"record cannot be decoded: {exc}"))
                leaves.append(leaf_hash(value))  # the tree then fails too
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                report.problems.append(Problem(f"seq {seq}", "record is not valid JSON"))
                record = None
            if isinstance(record, dict):
                if record.get("seq") != seq:
                    report.problems.append(Problem(
                        f"seq {seq}", f"record says seq {record.get('seq')}"
                    ))
                elif canonical(record) != raw:
                    report.problems.append(Problem(f"seq {seq}", "record is not canonical"))
            elif record is not None:
                report.problems.append(Problem(f"seq {seq}", "record is not an object"))
            leaves.append(leaf_hash(raw))
    return leaves


def verify_log(
    store: Store, verifier: VerifierKey, external: list[tuple[str, str]] | None = None
) -> LogReport:
    """Verify the stored log; ``external`` holds (label, note text) kept elsewhere."""
    report = LogReport()
    leaves = load_leaves(store, report)
    report.records = len(leaves)
    report.root = root_hash(leaves)

    with store.read() as rt:
        head_size, head_root = tree_head(rt)
        kept = [(size, note.decode(errors="replace")) for size, note in rt.iter_checkpoints()]
    if head_size != len(leaves) or head_root != report.root:
        report.problems.append(Problem(
            "tree head",
            f"the store's tree head (size {head_size}) does not match the {len(leaves)} "
            "stored records",
        ))

    # Prefix roots for all checkpoint sizes in one pass.
    sizes = sorted({size for size, _ in kept if size <= len(leaves)})
    prefix_roots: dict[int, bytes] = {}
    frontier = Frontier()
    wanted = iter(sizes)
    next_size = next(wanted, None)
    if next_size == 0:
        prefix_roots[0] = frontier.root()
        next_size = next(wanted, None)
    for leaf in leaves:
        frontier.append(leaf)
        while next_size is not None and frontier.size == next_size:
            prefix_roots[next_size] = frontier.root()
            next_size = next(wanted, None)

    good_before = 0
    for size, note in kept:
        report.checkpoints += 1
        where = f"checkpoint {size}"
        try:
            cp = open_checkpoint(note, verifier)
        except CheckpointError as exc:
            report.problems.append(Problem(where, str(exc)))
            continue
        if cp.size != size:
            report.problems.append(Problem(where, f"is filed under size {size} but says {cp.size}"))
            continue
        if size > len(leaves):
            report.problems.append(Problem(
                where, f"covers {size} records but only {len(leaves)} are stored (truncated)"
            ))
            continue
        if prefix_roots[size] != cp.root:
            report.problems.append(Problem(
                where, f"root differs: a record in seq {good_before}..{size - 1} was changed, "
                "removed or reordered",
            ))
            continue
        good_before = size
        report.newest_checkpoint = max(report.newest_checkpoint, size)

    for label, note in external or []:
        problem = check_external(leaves, report.root, note, verifier)
        if problem:
            report.problems.append(Problem(label, problem))
    return report


def check_external(
    leaves: list[bytes], root: bytes, note: str, verifier: VerifierKey
) -> str | None:
    """Why the log is inconsistent with a checkpoint kept elsewhere, or None."""
    try:
        cp: Checkpoint = open_checkpoint(note, verifier)
    except CheckpointError as exc:
        return str(exc)
    if cp.size > len(leaves):
        return (f"the checkpoint covers {cp.size} records but the log has {len(leaves)}: "
                "the log was truncated")
    proof = consistency_proof(leaves, cp.size)
    if not verify_consistency(cp.size, len(leaves), cp.root, root, proof):
        return (f"the log is not consistent with this checkpoint (size {cp.size}): "
                "records up to it were rewritten")
    return None
