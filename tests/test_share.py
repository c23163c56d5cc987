"""Shared reads: the store's read policy at seal (--seal-read-mode, --seal-group) and the
admins' ``worm-fs share``, on a real mount with real uids.

A writer's 0600 must not decide forever that nobody else can read the weights: the
policy adds read bits at seal, ``share`` adds them afterwards; neither ever adds a write
bit or removes anything.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Mount, as_ids, as_user, run_cli, wait_sealed
from tests.test_core import records as core_records
from worm_fs.audit.log import AuditLog
from worm_fs.core.deletion import Deletions
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import Caller
from worm_fs.errors import Refused
from worm_fs.store import Store

ADMIN_GID = 4242
READERS_GID = 4343
ALICE = (1001, 1001, ())  # the writer
BOB = (1002, 1002, ())  # another user
ERIN = (1005, 1005, (READERS_GID,))  # another user, in the readers' group
CAROL = (1003, 1003, (ADMIN_GID,))  # an admin


@pytest.fixture
def store_factory(public_base: Path) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []

    def make(*options: str) -> Mount:
        m = Mount(public_base / "state", public_base / "mnt",
                  ["--allow-other", "--admin-group", str(ADMIN_GID),
                   "--runtime-dir", str(public_base / "run"), *options])
        mounts.append(m)
        m.start()
        os.chmod(m.path, 0o777)  # in the root's window: everyone may create here
        return m

    yield make
    for m in mounts:
        m.stop()


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def save_like_transformers(directory: Path, data: bytes) -> None:
    """What a Hugging Face save does: a private temp file, renamed into place."""
    os.mkdir(directory, 0o700)
    write_private(directory / "model.safetensors.tmp", data)
    os.rename(directory / "model.safetensors.tmp", directory / "model.safetensors")


def read(path: Path) -> Callable[[], object]:
    return lambda: path.read_bytes()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def records(m: Mount, op: str) -> list[dict]:
    out = run_cli("log", "show", str(m.path), "--json", check=True).stdout
    return [r for r in map(json.loads, out.splitlines()) if r["op"] == op]


# ---------------------------------------------------------------------- the policy
def test_a_file_written_0600_is_readable_by_another_uid_under_seal_read_mode_0444(
    store_factory,
) -> None:
    m = store_factory("--seal-read-mode", "0444")
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w" * 1000)) == 0
    wait_sealed(weights)
    assert mode_of(weights) == 0o444
    assert as_ids(BOB, read(weights)) == 0
    seal = [r for r in records(m, "seal") if r["path"] == "/weights.bin"]
    assert seal and seal[-1]["mode"] == 0o444
    # a directory gets read and search bits at its mkdir
    run = m.path / "run"
    assert as_ids(ALICE, lambda: os.mkdir(run, 0o700)) == 0
    assert mode_of(run) == 0o755
    assert as_ids(BOB, lambda: os.listdir(run)) == 0


def test_without_a_policy_a_0600_file_stays_unreadable_by_others(store_factory) -> None:
    m = store_factory()
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    assert mode_of(weights) == 0o400
    assert as_ids(BOB, read(weights)) == errno.EACCES
    assert as_ids(ALICE, read(weights)) == 0
    seal = [r for r in records(m, "seal") if r["path"] == "/weights.bin"]
    assert seal and (seal[-1]["mode"], seal[-1]["group"]) == (0o400, ALICE[1])


def test_a_transformers_style_save_is_readable_by_another_uid_under_the_policy(
    store_factory,
) -> None:
    m = store_factory("--seal-read-mode", "0444")
    ckpt = m.path / "checkpoint-500"
    assert as_ids(ALICE, lambda: save_like_transformers(ckpt, b"tensors" * 1000)) == 0
    wait_sealed(ckpt / "model.safetensors")
    assert as_ids(BOB, read(ckpt / "model.safetensors")) == 0
    assert os.listdir(ckpt) == ["model.safetensors"]
    # a chmod in the settle window cannot take the policy's read bits back
    assert as_ids(ALICE, lambda: os.chmod(ckpt / "model.safetensors", 0o400)) == 0
    assert mode_of(ckpt / "model.safetensors") == 0o444


def test_seal_group_and_0440_let_the_group_read_and_nobody_else(store_factory) -> None:
    m = store_factory("--seal-read-mode", "0440", "--seal-group", str(READERS_GID))
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    st = os.stat(weights)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o440, READERS_GID)
    assert as_ids(ERIN, read(weights)) == 0
    assert as_ids(BOB, read(weights)) == errno.EACCES


def test_a_seal_read_mode_with_write_bits_refuses_the_mount(public_base: Path) -> None:
    (public_base / "mnt").mkdir()
    r = run_cli("mount", str(public_base / "state"), str(public_base / "mnt"),
                "--seal-read-mode", "0666")
    assert r.returncode == 2 and "never write bits" in r.stderr
    assert not os.path.ismount(public_base / "mnt")


# ---------------------------------------------------------------------- share
def test_share_by_an_admin_adds_read_bits_and_is_recorded(store_factory) -> None:
    m = store_factory()
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    assert as_ids(BOB, read(weights)) == errno.EACCES  # (cached by the kernel as 0400)
    code, out, err = as_user(CAROL, "share", str(weights), "--mode", "0444", "--json")
    assert code == 0, err
    assert json.loads(out)["mode"] == "0444"
    assert mode_of(weights) == 0o444
    assert as_ids(BOB, read(weights)) == 0
    share = records(m, "share")
    assert [(r["path"], r["old_mode"], r["new_mode"], r["uid"]) for r in share] == [
        ("/weights.bin", "0400", "0444", CAROL[0])]
    # and it cannot be taken back by the writer's chmod in the settle window
    assert as_ids(ALICE, lambda: os.chmod(weights, 0o400)) == 0
    assert mode_of(weights) == 0o444


def test_share_is_for_admins_only(store_factory) -> None:
    m = store_factory()
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    for who in (ALICE, BOB):
        code, _, err = as_user(who, "share", str(weights), "--mode", "0444")
        assert code == 3, err
    assert mode_of(weights) == 0o400
    assert records(m, "share") == []


def test_share_refuses_write_bits_and_anything_but_read_and_search(store_factory) -> None:
    m = store_factory()
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    for mode in ("0666", "0200", "4444", "1555"):
        code, _, err = as_user(CAROL, "share", str(weights), "--mode", mode)
        assert code == 3 and "never write bits" in err and "\n" not in err.strip(), err
    assert mode_of(weights) == 0o400
    refused = records(m, "share")
    assert len(refused) == 4 and {r["result"] for r in refused} == {"EINVAL"}
    assert all(r["uid"] == CAROL[0] for r in refused)


def test_share_never_removes_a_bit(store_factory) -> None:
    m = store_factory()
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: (write_private(weights, b"w"), os.chmod(weights, 0o640))) == 0
    wait_sealed(weights)
    assert mode_of(weights) == 0o440
    code, _, err = as_user(CAROL, "share", str(weights), "--mode", "0004")
    assert code == 0, err
    assert mode_of(weights) == 0o444


def test_share_recursive_opens_a_private_tree_to_other_readers(store_factory) -> None:
    m = store_factory()
    ckpt = m.path / "checkpoint-500"
    assert as_ids(ALICE, lambda: save_like_transformers(ckpt, b"tensors")) == 0
    wait_sealed(ckpt / "model.safetensors")
    assert as_ids(BOB, read(ckpt / "model.safetensors")) == errno.EACCES
    code, out, err = as_user(CAROL, "share", str(ckpt), "--mode", "0444", "--recursive",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] == 2
    assert mode_of(ckpt) == 0o755 and mode_of(ckpt / "model.safetensors") == 0o444
    assert as_ids(BOB, read(ckpt / "model.safetensors")) == 0
    assert sorted(r["path"] for r in records(m, "share")) == [
        "/checkpoint-500", "/checkpoint-500/model.safetensors"]


def test_the_policy_can_come_from_the_config_file(store_factory, public_base: Path) -> None:
    config = public_base / "worm-fs.toml"
    config.write_text(f'seal_read_mode = "0440"\nseal_group = "{READERS_GID}"\n')
    m = store_factory("--config", str(config))
    weights = m.path / "weights.bin"
    assert as_ids(ALICE, lambda: write_private(weights, b"w")) == 0
    wait_sealed(weights)
    assert (mode_of(weights), os.stat(weights).st_gid) == (0o440, READERS_GID)
    assert as_ids(ERIN, read(weights)) == 0


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Deletions]:
    core = WormCore(Store(tmp_path), AuditLog(boot_id="t"), seal_read_mode=0o444)
    core.initialize()
    yield Deletions(core, admin_gids=frozenset({ADMIN_GID}))
    core.store.close()


def caller(who: tuple[int, int, tuple[int, ...]]) -> Caller:
    return Caller(uid=who[0], gid=who[1], pid=2, comm="t", groups=frozenset(who[2]))


def test_the_desk_refuses_non_admins_and_write_bits_and_records_both(desk) -> None:
    core = desk.core
    core.mkdir(ROOT_INO, b"run", 0o700, caller(ALICE))
    for who, mode, err in ((BOB, 0o444, errno.EPERM), (CAROL, 0o644, errno.EINVAL)):
        with pytest.raises(Refused) as exc:
            desk.share("/run", caller(who), mode)
        assert exc.value.errno == err
    assert core.lookup(ROOT_INO, b"run").mode == 0o755  # the policy's, at mkdir
    refused = [(r["uid"], r["result"]) for r in core_records(core) if r["op"] == "share"]
    assert refused == [(BOB[0], "EPERM"), (CAROL[0], "EINVAL")]


def test_a_recursive_share_over_the_entry_cap_is_refused_whole(
    desk, monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = desk.core
    top = core.mkdir(ROOT_INO, b"run", 0o700, caller(ALICE))
    for n in range(4):
        core.mkdir(top.ino, f"d{n}".encode(), 0o700, caller(ALICE))
    monkeypatch.setattr("worm_fs.core.deletion.MAX_REQUEST_ENTRIES", 3)
    with pytest.raises(Refused) as exc:
        desk.share("/run", caller(CAROL), 0o004, recursive=True)
    assert exc.value.errno == errno.E2BIG
    assert [r["result"] for r in core_records(core) if r["op"] == "share"] == ["E2BIG"]
    assert desk.share("/run/d0", caller(CAROL), 0o004)["changed"] == 0  # 0755 has it
