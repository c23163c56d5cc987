"""Quotas per uid and per directory tree: the core with a fake clock, then a real mount
with real uids and the CLI."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.conftest import Mount, as_uid, as_user, run_cli, wait_sealed
from tests.test_core import ALICE, BOB, FakeClock, open_core
from worm_fs.core.deletion import Deletions
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import AttrChange, Caller
from worm_fs.core.quota_admin import KEEP, NONE
from worm_fs.errors import NotFound, Refused

ROOT = Caller(uid=0, gid=0, pid=1, comm="admin")
SECOND_ADMIN = Caller(uid=1005, gid=4242, pid=2, comm="admin2")


@pytest.fixture
def core(tmp_path: Path):
    c = open_core(tmp_path, FakeClock())
    yield c
    c.store.close()


@pytest.fixture
def desk(core: WormCore) -> Deletions:
    return Deletions(core, admin_gids=frozenset({4242}))


def write(core: WormCore, parent: int, name: bytes, data: bytes, who: Caller = ALICE) -> int:
    fh, inode = core.create(parent, name, 0o644, os.O_WRONLY, who)
    try:
        core.write(fh, 0, data)
    finally:
        core.release(fh)
        core.commit_pending()
    return inode.ino


def records(core: WormCore) -> list[dict]:
    with core.store.read() as rt:
        return [json.loads(raw) for _, raw in rt.iter_records()]


def used(desk: Deletions, **match: object) -> tuple[int, int]:
    for q in desk.quotas.show(ROOT):
        if all(q.get(k) == v for k, v in match.items()):
            return q["bytes_used"], q["files_used"]
    return 0, 0


def test_a_uid_bytes_quota_refuses_the_write_that_passes_it(
    core: WormCore, desk: Deletions
) -> None:
    desk.quotas.set(ROOT, 10, NONE, uid=ALICE.uid)
    write(core, ROOT_INO, b"a", b"12345678")
    fh, _ = core.create(ROOT_INO, b"b", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"12")  # 10 bytes: at the limit
    with pytest.raises(Refused) as exc:
        core.write(fh, 2, b"3")
    assert exc.value.errno == errno.EDQUOT and "uid 1000" in str(exc.value)
    with pytest.raises(Refused):  # a retry is refused too, and not recorded again
        core.write(fh, 2, b"3")
    core.write(fh, 0, b"xy")  # overwriting inside the file costs nothing
    core.release(fh)
    core.commit_pending()
    write(core, ROOT_INO, b"bobs", b"x" * 100, BOB)  # another uid is not limited
    refusals = [r for r in records(core) if r["result"] == "EDQUOT"]
    assert [(r["op"], r["uid"]) for r in refusals] == [("write", ALICE.uid)]
    assert used(desk, uid=ALICE.uid) == (10, 2)


def test_a_files_quota_refuses_the_create(core: WormCore, desk: Deletions) -> None:
    desk.quotas.set(ROOT, NONE, 2, uid=ALICE.uid)
    write(core, ROOT_INO, b"one", b"1")
    write(core, ROOT_INO, b"two", b"2")
    with pytest.raises(Refused) as exc:
        core.create(ROOT_INO, b"three", 0o644, os.O_WRONLY, ALICE)
    assert exc.value.errno == errno.EDQUOT
    with pytest.raises(NotFound):
        core.lookup(ROOT_INO, b"three")
    core.commit_pending()  # refusal records ride the next commit
    assert [r["op"] for r in records(core) if r["result"] == "EDQUOT"] == ["create"]


def test_deduplicated_bytes_count_for_each_file(core: WormCore, desk: Deletions) -> None:
    payload = os.urandom(1 << 20)
    write(core, ROOT_INO, b"a", payload)
    write(core, ROOT_INO, b"b", payload)  # shares every chunk with a
    assert used(desk, uid=ALICE.uid) == (2 << 20, 2)
    assert core.stats()["stored_bytes"] < (1 << 20) + 4096


def test_an_extending_truncate_is_charged(core: WormCore, desk: Deletions) -> None:
    desk.quotas.set(ROOT, 1000, NONE, uid=ALICE.uid)
    fh, inode = core.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, ALICE)
    core.setattr(inode.ino, AttrChange(size=900), fh, ALICE)
    with pytest.raises(Refused) as exc:
        core.setattr(inode.ino, AttrChange(size=2000), fh, ALICE)
    assert exc.value.errno == errno.EDQUOT
    core.setattr(inode.ino, AttrChange(size=100), fh, ALICE)  # shrinking gives it back
    core.write(fh, 100, b"x" * 800)
    core.release(fh)
    core.commit_pending()
    assert used(desk, uid=ALICE.uid) == (900, 1)


def test_a_tree_quota_counts_what_is_there_and_fences_renames(
    core: WormCore, desk: Deletions
) -> None:
    team = core.mkdir(ROOT_INO, b"team", 0o777, ALICE)
    other = core.mkdir(ROOT_INO, b"other", 0o777, ALICE)
    write(core, team.ino, b"old", b"o" * 300)
    fh, _ = core.create(team.ino, b"open", 0o644, os.O_WRONLY, BOB)  # being written
    core.write(fh, 0, b"b" * 100)
    view = desk.quotas.set(ROOT, 1000, 10, path="/team")
    assert (view["bytes_used"], view["files_used"], view["path"]) == (400, 2, "/team")
    with pytest.raises(Refused) as exc:  # the open file now charges the tree as well
        core.write(fh, 100, b"b" * 601)
    assert exc.value.errno == errno.EDQUOT and "/team" not in str(exc.value)
    core.write(fh, 100, b"b" * 600)
    core.release(fh)
    core.commit_pending()
    with pytest.raises(Refused) as exc:
        write(core, team.ino, b"more", b"m", BOB)
    assert exc.value.errno == errno.EDQUOT
    write(core, other.ino, b"free", b"f" * 5000)  # outside the tree: no limit
    with pytest.raises(Refused) as exc:
        core.rename(other.ino, b"free", team.ino, b"free", 0, ALICE)
    assert exc.value.errno == errno.EXDEV
    assert used(desk, path="/team") == (1000, 3)


def test_an_approved_deletion_gives_usage_back(core: WormCore, desk: Deletions) -> None:
    d = core.mkdir(ROOT_INO, b"runs", 0o755, ALICE)
    write(core, d.ino, b"a", b"a" * 500)
    write(core, d.ino, b"b", b"b" * 500)
    desk.quotas.set(ROOT, 1000, NONE, uid=ALICE.uid)
    desk.quotas.set(ROOT, 1000, NONE, path="/runs")
    req = desk.request("/runs/a", "obsolete", ALICE)
    desk.approve(req.id, ROOT)
    assert used(desk, uid=ALICE.uid) == (500, 1)
    assert used(desk, path="/runs") == (500, 1)
    write(core, d.ino, b"c", b"c" * 500)  # fits again
    req = desk.request("/runs", "all of it", ALICE)
    desk.approve(req.id, ROOT)
    assert not [q for q in desk.quotas.show(ROOT) if q["kind"] == "tree"]


def test_usage_survives_a_restart_and_is_counted_once_for_an_old_store(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    core = open_core(tmp_path, clock)
    Deletions(core).quotas.set(ROOT, 5000, KEEP, uid=ALICE.uid)
    write(core, ROOT_INO, b"a", b"a" * 1234)
    write(core, ROOT_INO, b"b", b"b" * 10, BOB)
    with core.store.write() as tx:  # as a store from before quotas: no usage counted
        for name in ("quota/used/uid/1000", "quota/used/uid/1001", "quota/counted"):
            tx.raw_delete("meta", name.encode())
    core.store.close()
    core = open_core(tmp_path, clock)
    core.recover()
    desk = Deletions(core)
    assert used(desk, uid=ALICE.uid) == (1234, 1) and used(desk, uid=BOB.uid) == (10, 1)
    with pytest.raises(Refused):
        write(core, ROOT_INO, b"big", b"x" * 4000)  # the limit is still 5000
    core.store.close()
    core = open_core(tmp_path, clock)
    core.recover()
    # the file whose write was refused exists, empty
    assert used(Deletions(core), uid=ALICE.uid) == (1234, 2)
    core.store.close()


def test_only_admins_set_quotas_and_every_change_is_recorded(
    core: WormCore, desk: Deletions
) -> None:
    with pytest.raises(Refused) as exc:
        desk.quotas.set(ALICE, 10, 10, uid=ALICE.uid)
    assert exc.value.errno == errno.EPERM
    desk.quotas.set(SECOND_ADMIN, 10, KEEP, uid=BOB.uid)
    desk.quotas.set(SECOND_ADMIN, KEEP, 3, uid=BOB.uid)  # keeps the bytes limit
    assert [(q["bytes_limit"], q["files_limit"]) for q in desk.quotas.show(ROOT)
            if q.get("uid") == BOB.uid] == [(10, 3)]
    sets = [r for r in records(core) if r["op"] == "quota_set"]
    assert [(r["result"], r["target"]) for r in sets] == [
        ("EPERM", f"uid {ALICE.uid}"), ("ok", f"uid {BOB.uid}"), ("ok", f"uid {BOB.uid}")]
    assert [(r["bytes_limit"], r.get("files_limit")) for r in sets[1:]] == [(10, None), (10, 3)]


# ---------------------------------------------------------------------- a real mount
ADMIN = (1003, 1003, (4242,))


def test_quotas_on_a_real_mount(public_base: Path) -> None:
    alice = 1001
    m = Mount(public_base / "state", public_base / "mnt",
              ["--allow-other", "--admin-group", "4242",
               "--runtime-dir", str(public_base / "run")]).start()
    try:
        os.chmod(m.path, 0o777)
        code, out, err = as_user(ADMIN, "quota", "set", str(m.path), "--uid", str(alice),
                                 "--bytes", "1M", "--files", "5", "--json")
        assert code == 0, err
        assert json.loads(out)["bytes_limit"] == 1 << 20
        code, _, err = as_user((alice, alice, ()), "quota", "set", str(m.path), "--uid",
                               str(alice), "--bytes", "none")
        assert code == 3  # not an admin: the admin socket is not hers to use

        def fill() -> None:
            with open(m.path / "big.bin", "wb") as f:
                f.write(b"x" * (1 << 20))
                f.flush()
                f.write(b"y")
                f.flush()

        assert as_uid(alice, fill) == errno.EDQUOT
        wait_sealed(m.path / "big.bin")
        assert (m.path / "big.bin").stat().st_size == 1 << 20
        code, out, err = as_user(ADMIN, "quota", "show", str(m.path), "--json")
        assert code == 0, err
        mine = [q for q in json.loads(out) if q.get("uid") == alice]
        assert [(q["bytes_used"], q["files_used"]) for q in mine] == [(1 << 20, 1)]
        stats = json.loads(run_cli("stats", str(m.path), "--json", check=True).stdout)
        assert [(q["bytes_used"], q["bytes_limit"]) for q in stats["quotas"]
                if q.get("uid") == alice] == [(1 << 20, 1 << 20)]
        prom = run_cli("stats", str(m.path), "--prometheus", check=True).stdout
        assert 'worm_fs_quota_used_bytes{store="' in prom
        assert f'uid="{alice}"}} {1 << 20}' in prom
        shown = run_cli("log", "show", str(m.path), "--json", check=True).stdout
        ops = [json.loads(line) for line in shown.splitlines()]
        assert [r["result"] for r in ops if r["op"] == "quota_set"] == ["ok"]
        assert [r["op"] for r in ops if r["result"] == "EDQUOT"] == ["write"]
    finally:
        m.stop()
