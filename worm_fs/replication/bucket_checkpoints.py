"""Consistency of every checkpoint a bucket publishes (and of ones kept elsewhere).

The bucket keeps ``checkpoints/<size>`` for each checkpoint the daemon signed. Each one
must be signed by the pinned key and commit to a prefix of the newest tree: its root must
be the root of the first ``<size>`` leaves the newest checkpoint vouches for. A
checkpoint kept off the bucket (``verify --bucket --checkpoint FILE``) must pass the same
test, so a bucket rewound below it, or forked from it, is caught.
"""

from __future__ import annotations

from collections.abc import Sequence

from worm_fs.audit.checkpoint import CheckpointError, VerifierKey, open_checkpoint
from worm_fs.audit.merkle import Frontier


def check_checkpoints(published: Sequence[tuple[str, str | bytes | None]], leaves: Sequence[bytes],
                      verifier: VerifierKey) -> list[tuple[str, str]]:
    """Findings ``(object, detail)`` for the checkpoints in ``published`` (a name and its
    note, None if it vanished) against ``leaves``, the leaf hashes of the newest tree.

    One pass over ``leaves`` with a :class:`Frontier`: the root at each checkpoint's
    size is compared as the frontier reaches it.
    """
    findings: list[tuple[str, str]] = []
    wanted: dict[int, list[tuple[str, bytes]]] = {}
    for name, note in published:
        if note is None:
            findings.append((name, "listed but missing"))
            continue
        try:
            cp = open_checkpoint(note, verifier)
        except CheckpointError as exc:
            findings.append((name, f"not signed by the pinned key: {exc}"))
            continue
        if cp.size > len(leaves):
            findings.append((name, f"tree size {cp.size} is beyond the newest checkpoint's "
                                   f"{len(leaves)}: the log was rewound (or, in a bucket "
                                   f"still being written, an upload is in flight)"))
            continue
        wanted.setdefault(cp.size, []).append((name, cp.root))
    frontier = Frontier()
    for size in range(len(leaves) + 1):
        for name, root in wanted.get(size, ()):
            if frontier.root() != root:
                findings.append((name, f"not consistent with the newest checkpoint: the "
                                       f"first {size} records give another root (a fork)"))
        if size < len(leaves):
            frontier.append(leaves[size])
    return findings
