"""Tests for worm_fs.audit.merkle (RFC 9162 / RFC 6962 Merkle trees).

The fixed vectors are the Certificate Transparency reference vectors: the 8 leaf inputs,
the node hashes, the roots of every tree size 0..8, and the known inclusion and
consistency proofs, as published in github.com/transparency-dev/merkle
(testonly/constants.go, proof/verify_test.go) and github.com/google/certificate-
transparency-go (merkletree/merkle_verifier_test.go). Their 1-based "leaf" numbers
are converted to 0-based indices here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worm_fs.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- Reference vectors ---------------------------------------------------------------

LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# NODE_HASHES[level][i]: hash of the perfect subtree of height `level` at position i.
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [
        h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
    ],
]

# ROOTS[n]: root of the tree of the first n leaves.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# (0-based leaf index, tree size, proof)
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        3,
        [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")],
    ),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# Compact ranges (Frontier contents) for sizes 0..8, from the same reference.
N = NODE_HASHES
COMPACT_RANGES = [
    [],
    [N[0][0]],
    [N[1][0]],
    [N[1][0], N[0][2]],
    [N[2][0]],
    [N[2][0], N[0][4]],
    [N[2][0], N[1][2]],
    [N[2][0], N[1][2], N[0][6]],
    [N[3][0]],
]

REF_LEAVES = [leaf_hash(d) for d in LEAF_INPUTS]
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- An independent transcription of the RFC definitions (slices, recursion) ---------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


MAX_N = 70
BIG_LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_N)]
BIG_ROOTS = [ref_mth(BIG_LEAVES[:n]) for n in range(MAX_N + 1)]


# --- Hashing and roots ----------------------------------------------------------------


def test_empty_root():
    assert root_hash([]) == EMPTY_ROOT == ROOTS[0] == hashlib.sha256(b"").digest()


def test_leaf_hashes_match_reference():
    assert REF_LEAVES == NODE_HASHES[0]
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()


def test_node_hashes_match_reference():
    for level in range(1, len(NODE_HASHES)):
        below = NODE_HASHES[level - 1]
        for i, want in enumerate(NODE_HASHES[level]):
            assert node_hash(below[2 * i], below[2 * i + 1]) == want
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size):
    assert root_hash(REF_LEAVES[:size]) == ROOTS[size]


def test_root_hash_rejects_malformed_leaf():
    with pytest.raises(ValueError, match="index 1"):
        root_hash([REF_LEAVES[0], b"short"])
    with pytest.raises(ValueError):
        root_hash([32])  # not bytes (bytes(32) would silently be 32 zero bytes)


def test_roots_match_reference_transcription_up_to_70():
    for n in range(MAX_N + 1):
        assert root_hash(BIG_LEAVES[:n]) == BIG_ROOTS[n]


# --- Inclusion proofs -----------------------------------------------------------------


def inclusion_probes(index, size, proof, root, leaf):
    """Corruptions of a valid (index, size, proof, root, leaf) that must all fail."""
    probes = [
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size // 2", (leaf, index, size // 2, proof, root)),
        ("wrong leaf", (leaf_hash(b"WrongLeaf"), index, size, proof, root)),
        ("short leaf", (b"WrongLeaf", index, size, proof, root)),
        ("empty root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("random root", (leaf, index, size, proof, SOME_HASH)),
        ("short root", (leaf, index, size, proof, root[:31])),
        ("trailing garbage", (leaf, index, size, [*proof, b""], root)),
        ("trailing root", (leaf, index, size, [*proof, root], root)),
        ("preceding garbage", (leaf, index, size, [b"", *proof], root)),
        ("preceding root", (leaf, index, size, [root, *proof], root)),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((f"flip proof[{i}]", (leaf, index, size, bad, root)))
    if proof:
        probes.append(("truncated", (leaf, index, size, proof[:-1], root)))
    if len(proof) > 1:
        probes.append(("inserted", (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root)))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(index, size, proof):
    leaves = REF_LEAVES[:size]
    assert inclusion_proof(leaves, index) == proof
    assert verify_inclusion(REF_LEAVES[index], index, size, proof, ROOTS[size])
    wrong = [
        desc
        for desc, args in inclusion_probes(index, size, proof, ROOTS[size], REF_LEAVES[index])
        if verify_inclusion(*args)
    ]
    assert wrong == []


def test_reference_inclusion_proofs_all_of_size_8():
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(REF_LEAVES[:size], index)
            assert proof == ref_path(index, REF_LEAVES[:size])
            assert verify_inclusion(REF_LEAVES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1), (-1, 1)])
def test_verify_inclusion_degenerate(index, size):
    for leaf, root in [(SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)]:
        assert not verify_inclusion(leaf, index, size, [], root)


def test_verify_inclusion_single_entry():
    single = leaf_hash(b"data")
    assert verify_inclusion(single, 0, 1, [], single)
    assert not verify_inclusion(single, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], single)
    assert not verify_inclusion(b"", 0, 1, [], b"")


def test_inclusion_proof_rejects_bad_index():
    for index in (-1, 8, 100):
        with pytest.raises(ValueError):
            inclusion_proof(REF_LEAVES, index)
    with pytest.raises(ValueError):
        inclusion_proof([], 0)


def test_every_inclusion_proof_up_to_70():
    for n in range(1, MAX_N + 1):
        leaves = BIG_LEAVES[:n]
        for i in range(n):
            proof = inclusion_proof(leaves, i)
            assert proof == ref_path(i, leaves), (n, i)
            assert verify_inclusion(leaves[i], i, n, proof, BIG_ROOTS[n]), (n, i)


# --- Consistency proofs ---------------------------------------------------------------


def consistency_probes(old, new, old_root, new_root, proof):
    """Corruptions of a valid non-trivial consistency proof that must all fail."""
    probes = [
        ("old - 1", (old - 1, new, old_root, new_root, proof)),
        ("old + 1", (old + 1, new, old_root, new_root, proof)),
        ("old ^ 2", (old ^ 2, new, old_root, new_root, proof)),
        ("new * 2", (old, new * 2, old_root, new_root, proof)),
        ("new // 2", (old, new // 2, old_root, new_root, proof)),
        ("wrong old root", (old, new, b"WrongRoot", new_root, proof)),
        ("wrong new root", (old, new, old_root, b"WrongRoot", proof)),
        ("random old root", (old, new, SOME_HASH, new_root, proof)),
        ("random new root", (old, new, old_root, SOME_HASH, proof)),
        ("swapped roots", (old, new, new_root, old_root, proof)),
        ("empty proof", (old, new, old_root, new_root, [])),
        ("trailing garbage", (old, new, old_root, new_root, [*proof, b""])),
        ("trailing old root", (old, new, old_root, new_root, [*proof, old_root])),
        ("trailing new root", (old, new, old_root, new_root, [*proof, new_root])),
        ("preceding garbage", (old, new, old_root, new_root, [b"", *proof])),
        ("preceding old root", (old, new, old_root, new_root, [old_root, *proof])),
        ("preceding new root", (old, new, old_root, new_root, [new_root, *proof])),
        ("preceding proof[0]", (old, new, old_root, new_root, [proof[0], *proof])),
        ("truncated", (old, new, old_root, new_root, proof[:-1])),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((f"flip proof[{i}]", (old, new, old_root, new_root, bad)))
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(old, new, proof):
    assert consistency_proof(REF_LEAVES[:new], old) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    if proof:
        wrong = [
            desc
            for desc, args in consistency_probes(old, new, ROOTS[old], ROOTS[new], proof)
            if verify_consistency(*args)
        ]
        assert wrong == []


R1 = ROOTS[1]
R2 = ROOTS[2]


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "want"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 0, EMPTY_ROOT, R1, [], False),
        (0, 1, EMPTY_ROOT, R1, [], True),
        (0, 8, EMPTY_ROOT, ROOTS[8], [], True),
        (0, 1, SOME_HASH, R1, [], False),  # a size-0 tree has only one root
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, R1, [EMPTY_ROOT], False),
        (1, 1, R1, R1, [], True),
        (1, 1, R1, R2, [], False),
        (1, 1, R1, R1, [EMPTY_ROOT], False),
        (1, 0, R1, EMPTY_ROOT, [], False),  # time travel
        (2, 1, R2, R1, [], False),
        (1, 2, R1, R2, [], False),  # missing proof
        (-1, 2, R1, R2, [NODE_HASHES[0][1]], False),
        (1, 2, R1, R2, [NODE_HASHES[0][1]], True),
        (1, 2, b"don't care", R2, [NODE_HASHES[0][1]], False),
    ],
)
def test_verify_consistency_edge_cases(old, new, old_root, new_root, proof, want):
    assert verify_consistency(old, new, old_root, new_root, proof) is want


def test_consistency_proof_rejects_bad_size():
    for old in (-1, 9):
        with pytest.raises(ValueError):
            consistency_proof(REF_LEAVES, old)
    assert consistency_proof(REF_LEAVES, 0) == []
    assert consistency_proof(REF_LEAVES, 8) == []


def test_every_consistency_proof_up_to_70():
    for n in range(1, MAX_N + 1):
        leaves = BIG_LEAVES[:n]
        for m in range(0, n + 1):
            proof = consistency_proof(leaves, m)
            want = [] if m in (0, n) else ref_subproof(m, leaves, True)
            assert proof == want, (m, n)
            assert verify_consistency(m, n, BIG_ROOTS[m], BIG_ROOTS[n], proof), (m, n)


# --- Lazy sequences -------------------------------------------------------------------


class LazyLeaves(Sequence):
    """A Sequence backed by a get_leaf(i) callback that refuses slicing."""

    def __init__(self, leaves: list[bytes]) -> None:
        self._leaves = leaves
        self.reads = 0

    def __len__(self) -> int:
        return len(self._leaves)

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise AssertionError("merkle functions must not slice the sequence")
        if not 0 <= i < len(self._leaves):
            raise IndexError(i)
        self.reads += 1
        return self._leaves[i]

    def __iter__(self):
        raise AssertionError("merkle functions must not iterate the sequence")


def test_functions_accept_a_lazy_sequence():
    n = 37
    lazy = LazyLeaves(BIG_LEAVES[:n])
    assert root_hash(lazy) == BIG_ROOTS[n]
    assert inclusion_proof(lazy, 20) == inclusion_proof(BIG_LEAVES[:n], 20)
    assert consistency_proof(lazy, 13) == consistency_proof(BIG_LEAVES[:n], 13)
    assert lazy.reads > 0


# --- Property tests -------------------------------------------------------------------


@st.composite
def leaf_lists(draw, min_size=0, max_size=MAX_N):
    data = draw(st.lists(st.binary(max_size=16), min_size=min_size, max_size=max_size))
    return [leaf_hash(d) for d in data]


@settings(max_examples=200, deadline=None)
@given(leaf_lists(min_size=1), st.data())
def test_random_trees_proofs_verify(leaves, data):
    n = len(leaves)
    root = root_hash(leaves)
    assert root == ref_mth(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    assert verify_inclusion(leaves[i], i, n, inclusion_proof(leaves, i), root)
    m = data.draw(st.integers(0, n), label="old size")
    proof = consistency_proof(leaves, m)
    assert verify_consistency(m, n, root_hash(leaves[:m]), root, proof)


def _mutate_proof(data, proof: list[bytes]) -> list[bytes]:
    """Apply one drawn mutation to a non-empty proof; the result always differs."""
    kind = data.draw(st.sampled_from(["flip", "drop", "insert", "replace", "swap"]), label="kind")
    bad = list(proof)
    pos = data.draw(st.integers(0, len(bad) - 1), label="position")
    if kind == "flip":
        bit = data.draw(st.integers(0, 255), label="bit")
        item = bytearray(bad[pos])
        item[bit // 8] ^= 1 << (bit % 8)
        bad[pos] = bytes(item)
    elif kind == "drop":
        del bad[pos]
    elif kind == "insert":
        extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
        bad.insert(data.draw(st.integers(0, len(bad)), label="at"), extra)
    elif kind == "replace":
        other = data.draw(
            st.binary(min_size=32, max_size=32).filter(lambda b: b != proof[pos]), label="other"
        )
        bad[pos] = other
    else:
        other = data.draw(st.integers(0, len(bad) - 1), label="other position")
        bad[pos], bad[other] = bad[other], bad[pos]
        if bad == proof:  # swapped equal positions or equal hashes: fall back to a drop
            del bad[pos]
    return bad


@settings(max_examples=400, deadline=None)
@given(st.integers(1, MAX_N), st.data())
def test_mutated_inclusion_proofs_fail(n, data):
    leaves = BIG_LEAVES[:n]
    root = BIG_ROOTS[n]
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(leaves, i)
    target = data.draw(st.sampled_from(["proof", "index", "root", "leaf"]), label="target")
    if target == "proof" and proof:
        assert not verify_inclusion(leaves[i], i, n, _mutate_proof(data, proof), root)
    elif target == "index" and n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="wrong index")
        assert not verify_inclusion(leaves[i], j, n, proof, root)
    elif target == "root":
        wrong = data.draw(st.sampled_from([r for r in BIG_ROOTS if r != root]), label="root")
        assert not verify_inclusion(leaves[i], i, n, proof, wrong)
    else:
        wrong = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b != leaves[i]))
        assert not verify_inclusion(wrong, i, n, proof, root)


@settings(max_examples=400, deadline=None)
@given(st.integers(2, MAX_N), st.data())
def test_mutated_consistency_proofs_fail(n, data):
    leaves = BIG_LEAVES[:n]
    m = data.draw(st.integers(1, n - 1), label="old size")
    old_root, new_root = BIG_ROOTS[m], BIG_ROOTS[n]
    proof = consistency_proof(leaves, m)
    assert verify_consistency(m, n, old_root, new_root, proof)
    target = data.draw(st.sampled_from(["proof", "old root", "new root", "swap"]), label="target")
    if target == "proof":
        assert not verify_consistency(m, n, old_root, new_root, _mutate_proof(data, proof))
    elif target == "old root":
        wrong = data.draw(st.sampled_from([r for r in BIG_ROOTS if r != old_root]))
        assert not verify_consistency(m, n, wrong, new_root, proof)
    elif target == "new root":
        wrong = data.draw(st.sampled_from([r for r in BIG_ROOTS if r != new_root]))
        assert not verify_consistency(m, n, old_root, wrong, proof)
    else:
        assert not verify_consistency(m, n, new_root, old_root, proof)


# --- Frontier -------------------------------------------------------------------------


def test_frontier_matches_reference_compact_ranges():
    f = Frontier()
    for size in range(9):
        assert f.size == size
        assert f.root() == ROOTS[size]
        encoded = f.to_bytes()
        assert encoded[:8] == size.to_bytes(8, "big")
        assert encoded[8:] == b"".join(COMPACT_RANGES[size])
        if size < 8:
            f.append(REF_LEAVES[size])


def test_frontier_root_and_round_trip_every_size():
    f = Frontier()
    assert f.root() == EMPTY_ROOT
    for n in range(300):
        if n <= MAX_N:
            assert f.root() == BIG_ROOTS[n]
        encoded = f.to_bytes()
        assert len(encoded) == 8 + 32 * n.bit_count()
        restored = Frontier.from_bytes(encoded)
        assert restored == f
        assert restored.size == n
        assert restored.root() == f.root()
        f.append(leaf_hash(n.to_bytes(4, "big")))


def test_frontier_root_equals_root_hash_up_to_300():
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(300)]
    f = Frontier()
    for n in range(301):
        assert f.root() == root_hash(leaves[:n]), n
        if n < 300:
            f.append(leaves[n])


@settings(max_examples=100, deadline=None)
@given(leaf_lists(max_size=120), st.data())
def test_frontier_survives_serialization_mid_stream(leaves, data):
    cut = data.draw(st.integers(0, len(leaves)), label="cut")
    first = Frontier()
    first.extend(leaves[:cut])
    resumed = Frontier.from_bytes(first.to_bytes())
    resumed.extend(leaves[cut:])
    assert resumed.size == len(leaves)
    assert resumed.root() == root_hash(leaves)
    # The original is not affected by the copy, and copy() is independent.
    assert first.size == cut
    clone = first.copy()
    clone.extend(leaves[cut:])
    assert clone == resumed
    assert first.size == cut


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        (1).to_bytes(8, "big"),  # size 1 but no hash
        (0).to_bytes(8, "big") + b"\x00" * 32,  # size 0 with a hash
        (3).to_bytes(8, "big") + b"\x00" * 32,  # size 3 needs 2 hashes
        (2).to_bytes(8, "big") + b"\x00" * 33,  # trailing byte
        (2**64 - 1).to_bytes(8, "big") + b"\x00" * 32,
    ],
)
def test_frontier_from_bytes_rejects_malformed(data):
    with pytest.raises(ValueError):
        Frontier.from_bytes(data)


def test_frontier_from_bytes_rejects_non_bytes():
    with pytest.raises(TypeError):
        Frontier.from_bytes("00000000")  # type: ignore[arg-type]


def test_frontier_append_rejects_malformed_leaf_and_keeps_state():
    f = Frontier()
    f.append(REF_LEAVES[0])
    before = f.to_bytes()
    for bad in (b"", b"x" * 31, b"x" * 33, "x" * 32, 32):
        with pytest.raises(ValueError):
            f.append(bad)  # type: ignore[arg-type]
    assert f.to_bytes() == before
    assert f.size == 1


def test_frontier_accepts_bytearray_and_memoryview():
    f = Frontier()
    f.append(bytearray(REF_LEAVES[0]))
    f.append(memoryview(REF_LEAVES[1]))
    assert f.root() == ROOTS[2]
    assert Frontier.from_bytes(bytearray(f.to_bytes())) == f
