"""Sealed files' layouts: canonical at seal, bound by a digest, checked before reading.

The mount tests edit the store with the daemon stopped (as a damaged disk or someone
with the state directory would) and read through a real mount.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_sealed
from tests.test_core import ALICE, FakeClock, open_core
from tests.test_mount_semantics import errno_of
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.layout import check_layout, chunk_count, layout_digest
from worm_fs.core.model import AttrChange, Caller, Inode
from worm_fs.core.scrub import scrub
from worm_fs.errors import Corruption
from worm_fs.store import Store, u64

MiB = 1 << 20


def stored_layout(store: Store, ino: int) -> tuple[Inode, list[tuple[int, bytes]], list[int]]:
    """The inode, its manifest and the stored length of each chunk."""
    with store.read() as rt:
        inode = Inode.from_bytes(rt.get_inode(ino) or b"")
        manifest = list(rt.iter_manifest(ino))
        lengths = [len(rt.get_chunk(key) or b"") for _, key in manifest]
    return inode, manifest, lengths


# ---------------------------------------------------------------------- the core
@pytest.fixture
def core(tmp_path: Path):
    c = open_core(tmp_path, FakeClock())
    yield c
    c.store.close()


def sparse_file(core: WormCore, name: bytes, writes: list[tuple[int, bytes]],
                truncate_to: int | None = None, caller: Caller = ALICE) -> int:
    fh, inode = core.create(ROOT_INO, name, 0o644, os.O_WRONLY, caller)
    for off, data in writes:
        core.write(fh, off, data)
    if truncate_to is not None:
        core.setattr(inode.ino, AttrChange(size=truncate_to), fh, caller)
    core.flush(fh)
    core.release(fh)
    core.commit_pending()
    return inode.ino


def test_seal_stores_holes_as_chunks_and_cuts_the_last_one_at_the_size(core: WormCore) -> None:
    # A write at 0, a hole of two chunks, a write in chunk 3, then an extending truncate.
    size = 5 * MiB + 123
    ino = sparse_file(core, b"sparse", [(0, b"a" * 100), (3 * MiB + 5, b"b" * 10)], size)
    inode, manifest, lengths = stored_layout(core.store, ino)
    assert inode.size == size
    assert [index for index, _ in manifest] == list(range(chunk_count(size)))
    assert lengths == [MiB] * 5 + [123]
    assert inode.layout == layout_digest(size, [key for _, key in manifest])
    expected = bytearray(size)
    expected[0:100] = b"a" * 100
    expected[3 * MiB + 5 : 3 * MiB + 15] = b"b" * 10
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    assert core.read(fh, 0, size + 10) == bytes(expected)
    assert scrub(core.store).ok


def test_seal_record_carries_the_layout_digest(core: WormCore) -> None:
    ino = sparse_file(core, b"f", [(0, b"x" * (2 * MiB + 1))])
    inode, _, _ = stored_layout(core.store, ino)
    with core.store.read() as rt:
        seals = [json.loads(raw) for _, raw in rt.iter_records()]
    seal = [r for r in seals if r.get("op") == "seal" and r.get("ino") == ino]
    assert len(seal) == 1 and seal[0]["layout"] == inode.layout != ""


def test_check_layout_names_each_kind_of_damage() -> None:
    keys = [bytes([n]) * 17 for n in range(3)]
    size = 2 * MiB + 7
    good = layout_digest(size, keys)
    assert check_layout(size, enumerate(keys), good) == keys
    cases = {
        "gap": ([(0, keys[0]), (2, keys[2])], good, "no chunk 1"),
        "short": ([(0, keys[0]), (1, keys[1])], good, "no chunk 2"),
        "past": ([*enumerate(keys), (3, keys[0])], good, "goes past"),
        "digest": (list(enumerate(keys)), layout_digest(size + 1, keys), "do not match"),
    }
    for manifest, digest, words in cases.values():
        with pytest.raises(Corruption, match=words):
            check_layout(size, manifest, digest)


def damage(store: Store, ino: int, how: str) -> None:
    with store.write() as tx:
        if how == "drop-entry":
            tx.raw_delete("manifests", u64(ino) + u64(1))
        elif how == "flip-index":
            key = tx.get_manifest(ino, 1)
            assert key is not None
            tx.raw_delete("manifests", u64(ino) + u64(1))
            tx.raw_put("manifests", u64(ino) + u64(1 ^ 0x40), key)
        elif how == "grow-size":
            inode = Inode.from_bytes(tx.get_inode(ino) or b"")
            inode.size += 1
            tx.put_inode(ino, inode.to_bytes())
        else:
            raise AssertionError(how)


@pytest.mark.parametrize("how", ["drop-entry", "flip-index", "grow-size"])
def test_core_refuses_to_read_a_damaged_layout(core: WormCore, how: str) -> None:
    ino = sparse_file(core, b"f", [(0, os.urandom(3 * MiB))])
    damage(core.store, ino, how)
    fh, _ = core.open(ino, os.O_RDONLY, ALICE)
    with pytest.raises(Corruption):
        core.read(fh, 0, MiB)
    assert core.failsafe is not None
    report = scrub(core.store)
    assert [(f.kind, f.path) for f in report.findings if f.kind == "layout"] == [("layout", "/f")]


def test_layouts_of_files_sealed_without_one_are_recorded_once(tmp_path: Path) -> None:
    clock = FakeClock()
    core = open_core(tmp_path, clock)
    ino = sparse_file(core, b"old", [(0, b"a" * 10), (2 * MiB, b"z")])
    with core.store.write() as tx:  # as an older version sealed it: a hole, no digest
        tx.raw_delete("manifests", u64(ino) + u64(1))
        inode = Inode.from_bytes(tx.get_inode(ino) or b"")
        inode.layout = ""
        tx.put_inode(ino, inode.to_bytes())
        tx.raw_delete("meta", b"layouts_recorded")
    core.store.close()

    core = open_core(tmp_path, clock)
    assert core.recover()["layouts"] == [str(ino)]
    inode, manifest, lengths = stored_layout(core.store, ino)
    assert [i for i, _ in manifest] == [0, 1, 2] and lengths == [MiB, MiB, 1]
    assert inode.layout == layout_digest(inode.size, [k for _, k in manifest])
    with core.store.read() as rt:
        ops = [json.loads(raw)["op"] for _, raw in rt.iter_records()]
    assert ops.count("layout_recorded") == 1
    assert core.recover()["layouts"] == []  # once per store
    core.store.close()


# ---------------------------------------------------------------------- a real mount
@pytest.mark.parametrize("how", ["drop-entry", "flip-index", "grow-size"])
def test_a_damaged_layout_reads_eio_records_corruption_and_goes_failsafe(
    mount_factory, how: str
) -> None:
    m = mount_factory("--settle", "0")
    payload = os.urandom(3 * MiB)
    (m.path / "model.bin").write_bytes(payload)
    (m.path / "other").write_bytes(b"fine")
    wait_sealed(m.path / "model.bin")
    assert m.stop() == 0
    store = m.store(write=True)
    try:
        with store.read() as rt:
            ino = rt.get_dirent(ROOT_INO, b"model.bin")
        assert ino is not None
        damage(store, ino, how)
    finally:
        store.close()
    m.start()
    with open(m.path / "model.bin", "rb") as f:
        with pytest.raises(OSError) as exc:
            f.read()
    assert exc.value.errno == errno.EIO
    assert (m.path / "other").read_bytes() == b"fine"  # other files still read
    assert errno_of(os.mkdir, m.path / "new") == errno.EROFS  # failsafe
    shown = run_cli("log", "show", str(m.path), "--json", check=True).stdout
    records = [json.loads(line) for line in shown.splitlines() if line.strip()]
    corrupt = [r for r in records if r.get("op") == "corruption"]
    assert corrupt and corrupt[-1]["path"] == "/model.bin"
    result = run_cli("verify", str(m.path))
    assert result.returncode == 1
    assert "layout: /model.bin" in result.stdout
