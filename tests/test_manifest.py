"""Manifest scanning and comparison on a plain directory: symlinks as entries.

What ``worm-fs manifest`` does with a real mount is in ``test_provenance.py``; here the
tree walk, the "does this link leave the tree" decision and the comparison run on
``tmp_path``, with statements built (and signed) in the test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from worm_fs.audit.checkpoint import SigningKey
from worm_fs.manifest import (
    PREDICATE_TYPE,
    PREDICATE_TYPE_V1,
    Entry,
    Link,
    Tree,
    build,
    compare,
    leaves_tree,
    open_envelope,
    sha256_file,
    sign,
    signed_links,
    walk,
)


def tree_of(root: Path) -> Tree:
    """What ``scan_sealed_tree`` would sign for ``root``, without seal facts."""
    files, targets = walk(root)
    return Tree(files=[Entry(rel, (root / rel).stat().st_size, sha256_file(root / rel),
                             "2026-01-01T00:00:00Z", 1) for rel in files],
                links=[Link(rel, target, not leaves_tree(rel, targets))
                       for rel, target in targets.items()])


@pytest.mark.parametrize("links, link, leaves", [
    ({"l": "/etc/passwd"}, "l", True),
    ({"l": "shards/0.bin"}, "l", False),
    ({"d/l": "../f"}, "d/l", False),
    ({"l": "../f"}, "l", True),
    ({"d/l": "../../f"}, "d/l", True),
    ({"l": "d/../../f"}, "l", True),
    ({"l": "."}, "l", False),
    ({"l": "no/such/name"}, "l", False),
    # ".." after an inner link goes up from where that link led, not lexically:
    # "d/up/../x" reads as "d/x", but d/up is the root, so its parent is outside
    ({"d/up": "..", "l": "d/up/../x"}, "l", True),
    ({"d/up": "..", "l": "d/up/x"}, "l", False),
    # and the other way: "d/e/../../../f" reads as leaving, but d/e is g/h/i
    ({"d/e": "../g/h/i", "l": "d/e/../../../f"}, "l", False),
    ({"d/e": "../g/h/i", "l": "d/e/../../../../f"}, "l", True),
    ({"out": "/srv", "l": "out/x"}, "l", True),  # through an inner link that leaves
    ({"a": "b", "b": "a"}, "a", True),  # a loop reaches nothing known: not covered
])
def test_a_link_leaves_the_tree_by_its_target_and_the_links_it_goes_through(
        links: dict[str, str], link: str, leaves: bool) -> None:
    assert leaves_tree(link, links) is leaves


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "shards").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "shards" / "0.bin").write_bytes(b"zero")
    os.symlink("shards/0.bin", root / "latest")
    os.symlink("shards", root / "weights")  # a link to a directory
    os.symlink("/scratch/tokenizer.json", root / "tokenizer.json")
    return root


def test_links_are_entries_with_their_targets(run_dir: Path) -> None:
    tree = tree_of(run_dir)
    assert [e.path for e in tree.files] == ["config.json", "shards/0.bin"]
    assert tree.links == [Link("latest", "shards/0.bin", True),
                          Link("tokenizer.json", "/scratch/tokenizer.json", False),
                          Link("weights", "shards", True)]
    statement = build(tree, "", "origin")
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"]["links"][1] == {
        "path": "tokenizer.json", "target": "/scratch/tokenizer.json", "covered": False}
    assert signed_links(statement) == tree.links
    result = compare(statement, run_dir)
    assert result.ok and result.checked == 2 and result.links_checked == 3
    assert result.not_covered == [tree.links[1]]


def test_a_tree_without_links_gets_the_v1_statement(run_dir: Path) -> None:
    for name in ("latest", "weights", "tokenizer.json"):
        (run_dir / name).unlink()
    statement = build(tree_of(run_dir), "", "origin")
    assert statement["predicateType"] == PREDICATE_TYPE_V1
    assert "links" not in statement["predicate"]
    os.symlink("config.json", run_dir / "alias")
    assert compare(statement, run_dir).extra_links == [("alias", "config.json")]


def test_every_kind_of_link_change_is_found(run_dir: Path) -> None:
    statement = build(tree_of(run_dir), "", "origin")
    (run_dir / "latest").unlink()
    os.symlink("shards/1.bin", run_dir / "latest")  # retargeted
    (run_dir / "weights").unlink()  # missing
    os.symlink("/tmp", run_dir / "shards" / "extra")  # extra, inside a directory
    os.symlink("../config.json", run_dir / "shards" / "cfg")  # extra, to a directory entry
    (run_dir / "config.json").unlink()
    os.symlink("/etc/hostname", run_dir / "config.json")  # a file became a link
    (run_dir / "tokenizer.json").unlink()
    (run_dir / "tokenizer.json").write_text("{}")  # a link became a file
    result = compare(statement, run_dir)
    assert not result.ok
    assert [(k.path, found) for k, found in result.retargeted] == [("latest", "shards/1.bin")]
    assert result.missing_links == ["weights"]
    assert result.extra_links == [("shards/cfg", "../config.json"), ("shards/extra", "/tmp")]
    assert result.now_links == [("config.json", "/etc/hostname")]
    assert [k.path for k in result.now_files] == ["tokenizer.json"]
    # a change of kind is reported once, not also as missing or extra
    assert result.missing == result.extra == result.changed == []


def test_a_link_to_a_directory_is_not_followed(run_dir: Path) -> None:
    statement = build(tree_of(run_dir), "", "origin")
    (run_dir / "shards" / "1.bin").write_bytes(b"one")
    result = compare(statement, run_dir)
    assert result.extra == ["shards/1.bin"]  # once, not again as weights/1.bin


def test_undecodable_link_names_and_targets_round_trip_as_bytes(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    os.symlink(b"f\xff", os.fsencode(root) + b"/l\xfe")
    os.symlink(b"/\xfdnew\nline", os.fsencode(root) + b"/out")
    key = SigningKey.generate("worm-fs/0123456789abcdef")
    envelope = sign(build(tree_of(root), "", key.name), key)
    statement = open_envelope(json.loads(json.dumps(envelope)), key.verifier())
    links = {os.fsencode(k.path): os.fsencode(k.target) for k in signed_links(statement)}
    assert links == {b"l\xfe": b"f\xff", b"out": b"/\xfdnew\nline"}
    assert compare(statement, root).ok
    os.unlink(os.fsencode(root) + b"/l\xfe")
    os.symlink(b"f\xfe", os.fsencode(root) + b"/l\xfe")  # one byte differs
    assert [k.path for k, _ in compare(statement, root).retargeted] == ["l\udcfe"]
