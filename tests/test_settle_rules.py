"""The settle window's limits: one user cannot keep another user's entries movable, the
window has an absolute end, and holds freeze names.

The core tests call it directly with a fake clock; the last test runs the reported
attack on a real mount with real uids.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Mount, as_uid, wait_sealed
from tests.test_core import ALICE, BOB, FakeClock
from worm_fs.audit.log import AuditLog
from worm_fs.core.deletion import Deletions
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import AttrChange, Caller
from worm_fs.core.policy import Op
from worm_fs.errors import Refused
from worm_fs.store import Store

ROOT = Caller(uid=0, gid=0, pid=1, comm="admin")
SECOND_ADMIN = Caller(uid=1005, gid=4242, pid=2, comm="admin2")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(tmp_path: Path, clock: FakeClock):
    c = WormCore(Store(tmp_path), AuditLog(boot_id="t"), settle_s=60, settle_limit_s=600,
                 clock=clock)
    c.initialize()
    yield c
    c.store.close()


def refusal(fn: Callable[[], object]) -> Refused:
    with pytest.raises(Refused) as exc:
        fn()
    return exc.value


def test_activity_of_one_user_does_not_keep_another_users_file_movable(
    core: WormCore, clock: FakeClock
) -> None:
    proj = core.mkdir(ROOT_INO, b"proj", 0o777, ALICE)
    fh, _ = core.create(proj.ino, b"model.bin", 0o644, os.O_WRONLY, BOB)
    core.write(fh, 0, b"bob's weights")
    core.release(fh)
    core.commit_pending()
    for n in range(5):  # alice keeps proj/ busy long after bob's file settled
        clock.advance(30)
        core.mkdir(proj.ino, f".keep{n}".encode(), 0o755, ALICE)
    exc = refusal(lambda: core.rename(ROOT_INO, b"proj", ROOT_INO, b"proj.moved", 0, ALICE))
    assert exc.errno == errno.EPERM
    assert "created by another user" in str(exc)
    assert core.lookup(proj.ino, b"model.bin").uid == BOB.uid
    # chmod and utimes of the directory are refused on the same grounds
    for change in (AttrChange(mode=0o700), AttrChange(mtime_ns=0)):
        assert refusal(lambda c=change: core.setattr(proj.ino, c, None, ALICE)).errno == \
            errno.EPERM


def test_a_tree_of_one_creator_is_still_renamed_in_its_window(
    core: WormCore, clock: FakeClock
) -> None:
    tmp = core.mkdir(ROOT_INO, b"tmp-checkpoint-5", 0o755, ALICE)
    sub = core.mkdir(tmp.ino, b"sub", 0o755, ALICE)
    fh, _ = core.create(sub.ino, b"model.safetensors", 0o600, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"w")
    core.release(fh)
    core.commit_pending()
    core.rename(ROOT_INO, b"tmp-checkpoint-5", ROOT_INO, b"checkpoint-5", 0, ALICE)
    assert core.lookup(ROOT_INO, b"checkpoint-5").ino == tmp.ino


def test_the_window_ends_at_the_limit_however_busy_the_tree_stays(
    core: WormCore, clock: FakeClock
) -> None:
    d = core.mkdir(ROOT_INO, b"busy", 0o755, ALICE)
    for n in range(19):  # a change every 30 s: the 60 s window alone would never close
        clock.advance(30)
        core.mkdir(d.ino, f"n{n}".encode(), 0o755, ALICE)
    core.rename(ROOT_INO, b"busy", ROOT_INO, b"busy2", 0, ALICE)  # 570 s: still open
    clock.advance(30)
    core.mkdir(d.ino, b"last", 0o755, ALICE)  # 600 s after creation: the limit
    exc = refusal(lambda: core.rename(ROOT_INO, b"busy2", ROOT_INO, b"busy3", 0, ALICE))
    assert exc.errno == errno.EPERM and "--settle-limit" in str(exc)
    # a file still being written is no exception
    fh, f = core.create(ROOT_INO, b"slow", 0o644, os.O_WRONLY, ALICE)
    clock.advance(601)
    core.write(fh, 0, b"x")
    assert refusal(lambda: core.rename(ROOT_INO, b"slow", ROOT_INO, b"slow2", 0, ALICE)) \
        .errno == errno.EPERM
    core.release(fh)
    core.commit_pending()


@pytest.mark.parametrize("where", ["itself", "above", "below"])
def test_a_hold_blocks_renames_in_the_window(core: WormCore, where: str) -> None:
    desk = Deletions(core, admin_gids=frozenset({4242}))
    top = core.mkdir(ROOT_INO, b"top", 0o755, ALICE)
    run = core.mkdir(top.ino, b"run", 0o755, ALICE)
    fh, _ = core.create(run.ino, b"f", 0o644, os.O_WRONLY, ALICE)
    core.release(fh)
    core.commit_pending()
    held = {"itself": "/top/run", "above": "/top", "below": "/top/run/f"}[where]
    req = desk.hold_set(held, ROOT, "litigation")
    if req is not None:  # a hold on a directory takes a second admin
        desk.approve(req.id, SECOND_ADMIN)
    exc = refusal(lambda: core.rename(top.ino, b"run", top.ino, b"run2", 0, ALICE))
    assert exc.errno == errno.EPERM and "legal hold" in str(exc)
    desk.hold_clear(held, ROOT)
    core.rename(top.ino, b"run", top.ino, b"run2", 0, ALICE)


def test_a_rename_decided_on_a_stale_survey_is_surveyed_again(core: WormCore) -> None:
    proj = core.mkdir(ROOT_INO, b"proj", 0o777, ALICE)
    with core.store.read() as rt:  # the survey a rename takes on its snapshot...
        below = core._survey(rt, Op.RENAME, core.inode_in(rt, proj.ino), ALICE)
        mixed = rt.get_counter("mixed_entries")
    assert below is not None and not below.closed
    core.mkdir(proj.ino, b"bobs", 0o755, BOB)  # ...then bob adds an entry before its job
    job = core._rename_job(ROOT_INO, b"proj", ROOT_INO, b"moved", 0, ALICE, False,
                           proj.ino, below, mixed)
    assert core.commit(job) is False  # stale: nothing done
    assert core.lookup(ROOT_INO, b"proj").ino == proj.ino
    exc = refusal(lambda: core.rename(ROOT_INO, b"proj", ROOT_INO, b"moved", 0, ALICE))
    assert "created by another user" in str(exc)


def test_a_file_of_another_user_being_created_in_the_tree_makes_the_survey_stale(
    core: WormCore,
) -> None:
    proj = core.mkdir(ROOT_INO, b"proj", 0o777, ALICE)
    with core.store.read() as rt:
        below = core._survey(rt, Op.RENAME, core.inode_in(rt, proj.ino), ALICE)
        mixed = rt.get_counter("mixed_entries")
    fh, _ = core.create(proj.ino, b"model.bin", 0o644, os.O_WRONLY, BOB)  # not stored yet
    job = core._rename_job(ROOT_INO, b"proj", ROOT_INO, b"moved", 0, ALICE, False,
                           proj.ino, below, mixed)
    assert core.commit(job) is False
    core.release(fh)
    core.commit_pending()


# ---------------------------------------------------------------------- a real mount
def test_a_directory_creator_cannot_move_another_users_model(public_base: Path) -> None:
    alice, bob = 1001, 1002
    m = Mount(public_base / "state", public_base / "mnt", ["--allow-other"]).start()
    try:
        os.chmod(m.path, 0o777)  # within the root's window: everyone may create here
        proj = m.path / "proj"
        assert as_uid(alice, lambda: (os.mkdir(proj), os.chmod(proj, 0o777))) == 0
        assert as_uid(bob, lambda: (proj / "model.bin").write_bytes(b"bob's model")) == 0
        wait_sealed(proj / "model.bin")
        assert as_uid(alice, lambda: (proj / ".keep1").write_bytes(b"")) == 0
        assert as_uid(alice, lambda: os.rename(proj, m.path / "proj.moved")) == errno.EPERM
        assert (proj / "model.bin").read_bytes() == b"bob's model"
        # alice's own tree is still hers to rename in its window
        assert as_uid(alice, lambda: (os.mkdir(m.path / "tmp-ckpt"),
                                      (m.path / "tmp-ckpt" / "w").write_bytes(b"w"),
                                      os.rename(m.path / "tmp-ckpt", m.path / "ckpt"))) == 0
    finally:
        m.stop()
