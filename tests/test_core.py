"""The core called directly, on a real LMDB store, with a fake clock (no mount)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from worm_fs.audit.log import AuditLog
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import AttrChange, Caller, State
from worm_fs.errors import NotFound, Refused
from worm_fs.store import CHUNK_SIZE, Store

ALICE = Caller(uid=1000, gid=1000, pid=11, comm="alice")
BOB = Caller(uid=1001, gid=1001, pid=12, comm="bob")
SECOND = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * SECOND)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_core(path: Path, clock: FakeClock, settle: float = 60) -> WormCore:
    core = WormCore(Store(path), AuditLog(boot_id="test"), settle_s=settle, clock=clock)
    core.initialize()
    return core


@pytest.fixture
def core(tmp_path: Path, clock: FakeClock):
    c = open_core(tmp_path, clock)
    yield c
    c.store.close()


def write_file(core: WormCore, name: bytes, data: bytes, caller: Caller = ALICE) -> int:
    fh, inode = core.create(ROOT_INO, name, 0o644, os.O_WRONLY, caller)
    core.write(fh, 0, data)
    core.flush(fh)
    core.release(fh)
    core.commit_pending()  # the seal is written by the next (group) commit
    return inode.ino


def records(core: WormCore) -> list[dict]:
    core.commit_pending()
    with core.store.read() as rt:
        return [json.loads(raw) for _, raw in rt.iter_records()]


def test_sealed_file_has_its_sha256_and_no_write_bits(core: WormCore) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 17)
    ino = write_file(core, b"f", data)
    inode = core.getattr(ino)
    assert inode.state is State.SEALED
    assert inode.sha256 == hashlib.sha256(data).hexdigest()
    assert inode.mode & 0o222 == 0
    fh, _ = core.open(ino, os.O_RDONLY, BOB)
    assert core.read(fh, 0, len(data) + 10) == data


def test_refusals_raise_with_errno_and_leave_a_record(core: WormCore) -> None:
    ino = write_file(core, b"f", b"abc")
    with pytest.raises(Refused) as exc:
        core.open(ino, os.O_WRONLY, ALICE)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(Refused):
        core.unlink(ROOT_INO, b"f", ALICE)
    denied = [r for r in records(core) if r["result"] != "ok"]
    assert [(r["op"], r["result"], r["path"], r["pid"]) for r in denied] == [
        ("open", "EPERM", "/f", 11), ("unlink", "EPERM", "/f", 11)]


def test_settle_window_allows_the_creator_to_rename_until_it_expires(
    core: WormCore, clock: FakeClock
) -> None:
    write_file(core, b"tmp1", b"x")
    core.rename(ROOT_INO, b"tmp1", ROOT_INO, b"final1", 0, ALICE)
    write_file(core, b"tmp2", b"y")
    with pytest.raises(Refused):
        core.rename(ROOT_INO, b"tmp2", ROOT_INO, b"final2", 0, BOB)  # not the creator
    clock.advance(61)
    with pytest.raises(Refused):
        core.rename(ROOT_INO, b"tmp2", ROOT_INO, b"final2", 0, ALICE)  # settled
    with pytest.raises(Refused):
        core.setattr(core.lookup(ROOT_INO, b"tmp2").ino, AttrChange(mtime_ns=0), None, ALICE)
    assert core.lookup(ROOT_INO, b"final1").state is State.SEALED


def test_a_directory_stays_unsettled_while_anything_below_changes(
    core: WormCore, clock: FakeClock
) -> None:
    d = core.mkdir(ROOT_INO, b"tmp-checkpoint-1", 0o755, ALICE)
    for _ in range(3):
        clock.advance(50)
        fh, _ = core.create(d.ino, f"f{clock.now}".encode(), 0o644, os.O_WRONLY, ALICE)
        core.write(fh, 0, b"data")
        core.release(fh)
        core.commit_pending()
    clock.advance(50)  # 150 s after mkdir, 50 s after the last change below it
    core.rename(ROOT_INO, b"tmp-checkpoint-1", ROOT_INO, b"checkpoint-1", 0, ALICE)


def test_recovery_seals_a_flushed_file_and_quarantines_an_unflushed_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    core = open_core(tmp_path, clock)
    fh1, a = core.create(ROOT_INO, b"flushed", 0o644, os.O_WRONLY, ALICE)
    core.write(fh1, 0, b"complete")
    core.flush(fh1)
    fh2, b = core.create(ROOT_INO, b"torn", 0o644, os.O_WRONLY, ALICE)
    core.write(fh2, 0, b"first part")
    core.flush(fh2)
    core.write(fh2, 10, b" and more")  # never flushed: the crash loses it
    fh3, c = core.create(ROOT_INO, b"stored-unflushed", 0o644, os.O_WRONLY, ALICE)
    core.commit_pending()  # stored by the group commit, never flushed
    core.create(ROOT_INO, b"just-created", 0o644, os.O_WRONLY, ALICE)
    core.store.close()  # crash: no release

    core = open_core(tmp_path, clock)
    outcome = core.recover()
    assert outcome == {"sealed": [str(a.ino)], "quarantined": [str(b.ino), str(c.ino)],
                       "layouts": []}
    with pytest.raises(NotFound):  # a create is durable with the file's first flush
        core.lookup(ROOT_INO, b"just-created")
    assert core.getattr(a.ino).state is State.SEALED
    assert core.getattr(a.ino).sha256 == hashlib.sha256(b"complete").hexdigest()
    torn = core.getattr(b.ino)
    assert torn.state is State.QUARANTINED and not torn.sha256
    fh, _ = core.open(b.ino, os.O_RDONLY, BOB)
    assert core.read(fh, 0, 100) == b"first part"
    ops = [r["op"] for r in records(core)]
    assert ops.count("recover_seal") == 1 and ops.count("recover_quarantine") == 2
    core.store.close()


def test_the_audit_seq_continues_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    core = open_core(tmp_path, clock)
    write_file(core, b"a", b"1")
    first = records(core)
    core.store.close()
    core = open_core(tmp_path, clock)
    write_file(core, b"b", b"2")
    every = records(core)
    assert [r["seq"] for r in every] == list(range(len(every)))
    assert every[: len(first)] == first
    core.store.close()


def test_rewriting_a_stored_chunk_recomputes_the_digest(core: WormCore) -> None:
    fh, inode = core.create(ROOT_INO, b"z", 0o644, os.O_WRONLY, ALICE)
    body = bytearray(os.urandom(10 * CHUNK_SIZE))
    core.write(fh, 0, bytes(body))  # chunks are stored as they fill
    core.write(fh, 5, b"PATCHED")  # a zip writer patching its header
    body[5:12] = b"PATCHED"
    core.release(fh)
    core.commit_pending()
    assert core.getattr(inode.ino).sha256 == hashlib.sha256(body).hexdigest()
    assert core.stats()["stored_bytes"] == len(body)  # the replaced chunk was freed


def test_setting_the_clock_back_does_not_shorten_retention(tmp_path: Path) -> None:
    from worm_fs.core.deletion import Deletions

    clock = FakeClock()
    core = WormCore(Store(tmp_path), AuditLog(boot_id="t"), settle_s=0, retention_days=10,
                    clock=clock)
    core.initialize()
    desk = Deletions(core)
    write_file(core, b"early", b"1")
    clock.advance(-365 * 86_400)  # someone sets the system clock back a year...
    ino = write_file(core, b"late", b"2")  # ...then seals a file
    clock.advance(11 * 86_400)  # 11 days later by the (wrong) wall clock
    sealed = core.getattr(ino)
    assert sealed.sealed_ns >= 1_700_000_000 * SECOND  # the seal time did not go back
    req = desk.request("/late", "cleanup", ALICE)
    with pytest.raises(Refused) as exc:
        desk.approve(req.id, Caller(uid=0, gid=0, pid=1), "")
    assert "retained until" in str(exc.value)
    assert core.lookup(ROOT_INO, b"late").ino == ino
    core.store.close()


def test_a_small_file_costs_one_commit_and_its_seal_rides_the_next(
    core: WormCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = []
    real_write = core.store.write

    def counting_write():
        commits.append(1)
        return real_write()

    monkeypatch.setattr(core.store, "write", counting_write)
    fh, inode = core.create(ROOT_INO, b"small", 0o644, os.O_WRONLY, ALICE)
    assert core.lookup(ROOT_INO, b"small").ino == inode.ino  # visible before it is stored
    assert [n for n, _ in core.readdir(ROOT_INO)] == [b"small"]
    core.write(fh, 0, b"x" * 4096)
    core.flush(fh)  # one synced commit: the create, the data and the flush record
    core.release(fh)
    assert len(commits) == 1
    assert core.getattr(inode.ino).state is State.WRITING  # until the next commit
    core.commit_pending()
    assert len(commits) == 2
    assert core.getattr(inode.ino).state is State.SEALED
    ops = [r["op"] for r in records(core)]
    assert ops[-3:] == ["create", "flush", "seal"]


def test_deleting_an_orphaned_writing_file_leaves_recovery_nothing_to_trip_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    from worm_fs.core.deletion import Deletions

    core = open_core(tmp_path, clock, settle=0)
    fh, inode = core.create(ROOT_INO, b"orphan", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"x")
    core.commit_pending()  # stored, still "writing"
    core._writers.clear()  # what a failed seal and a failed quarantine leave behind
    desk = Deletions(core)
    req = desk.request("/orphan", "cleanup", ALICE)
    desk.approve(req.id, Caller(uid=0, gid=0, pid=1), "")
    core.close()
    core.store.close()
    core = open_core(tmp_path, clock)
    assert core.recover() == {"sealed": [], "quarantined": [], "layouts": []}
    assert core.stats()["writing"] == 0
    core.close()
    core.store.close()


def test_a_reader_whose_snapshot_predates_the_store_still_finds_a_new_file(
    core: WormCore,
) -> None:
    """Lookups run without the lock: a snapshot taken before the commit that stores a
    new file must still find it (this race once made a writer's first write fail)."""
    fh, inode = core.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, ALICE)
    with core.store.read() as old_snapshot:
        core.commit_pending()  # stores the file (in the daemon: another thread)
        assert old_snapshot.get_inode(inode.ino) is None
        assert core.inode_in(old_snapshot, inode.ino).ino == inode.ino
        assert core._child(old_snapshot, ROOT_INO, b"new") == inode.ino
    core.rename(ROOT_INO, b"new", ROOT_INO, b"renamed", 0, ALICE)
    with pytest.raises(NotFound):
        core.lookup(ROOT_INO, b"new")  # no stale name left behind by the grace list


def test_a_newer_version_of_a_chunk_always_wins_over_an_older_one(core: WormCore) -> None:
    """Two writes into one chunk whose hand-offs reach the storer out of order."""
    fh, inode = core.create(ROOT_INO, b"v", 0o644, os.O_WRONLY, ALICE)
    older = core.write_buffered(fh, 0, b"A" * CHUNK_SIZE)  # fills chunk 0: version A
    newer = core.write_buffered(fh, 0, b"B" * 4096)  # version B = BBBB + rest of A
    assert older is not None and newer is not None
    newer()  # B reaches the storer first...
    older()  # ...then A
    core.flush(fh)
    core.release(fh)
    core.commit_pending()
    expected = b"B" * 4096 + b"A" * (CHUNK_SIZE - 4096)
    assert core.getattr(inode.ino).sha256 == hashlib.sha256(expected).hexdigest()
    rfh, _ = core.open(inode.ino, os.O_RDONLY, BOB)
    assert core.read(rfh, 0, CHUNK_SIZE) == expected


def test_every_write_after_a_flush_waits_for_the_not_clean_mark(core: WormCore) -> None:
    fh, _ = core.create(ROOT_INO, b"m", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"x")
    core.flush(fh)
    first = core.write_buffered(fh, 1, b"y")
    second = core.write_buffered(fh, 2, b"z")  # before the first one's mark is stored
    assert first is not None and second is not None  # both wait for the mark
    first()
    assert core.write_buffered(fh, 3, b"w") is None  # marked now: nothing to wait for
    second()


def test_a_failed_follow_up_does_not_hang_the_next_flush(
    core: WormCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from worm_fs.errors import NoSpace

    fh, _ = core.create(ROOT_INO, b"full", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"x")
    core.flush(fh)
    follow_up = core.write_buffered(fh, 0, b"y" * CHUNK_SIZE)  # mark + one chunk
    real = core.store.write
    monkeypatch.setattr(core.store, "write", lambda: (_ for _ in ()).throw(NoSpace()))
    with pytest.raises(NoSpace):
        follow_up()
    monkeypatch.setattr(core.store, "write", real)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (core.flush(fh), done.set()), daemon=True)
    worker.start()
    assert done.wait(10), "flush hung waiting for chunks that were never queued"
    core.release(fh)
    core.commit_pending()


def test_renaming_a_file_before_its_first_flush_leaves_no_old_name(core: WormCore) -> None:
    fh, inode = core.create(ROOT_INO, b"tmp", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"data")
    core.rename(ROOT_INO, b"tmp", ROOT_INO, b"final", 0, ALICE)
    with pytest.raises(NotFound):
        core.lookup(ROOT_INO, b"tmp")
    assert [n for n, _ in core.readdir(ROOT_INO)] == [b"final"]
    core.release(fh)
    core.create(ROOT_INO, b"tmp", 0o644, os.O_WRONLY, ALICE)  # the name is free again


def test_a_refused_name_is_audited(core: WormCore) -> None:
    with pytest.raises(Refused) as exc:
        core.create(ROOT_INO, b"x" * 300, 0o644, os.O_WRONLY, ALICE)
    assert exc.value.errno == errno.ENAMETOOLONG
    refused = [r for r in records(core) if r["result"] == "ENAMETOOLONG"]
    assert [(r["op"], r["pid"]) for r in refused] == [("create", ALICE.pid)]


def test_a_directory_stays_movable_while_anything_deep_below_it_changes(
    core: WormCore, clock: FakeClock
) -> None:
    """Changes touch only the entry and its parent; the settle walk finds deep ones."""
    run = core.mkdir(ROOT_INO, b"run", 0o755, ALICE)
    a = core.mkdir(run.ino, b"a", 0o755, ALICE)
    b = core.mkdir(a.ino, b"b", 0o755, ALICE)
    clock.advance(120)  # everything settled
    fh, _ = core.create(b.ino, b"model.bin", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"w")
    core.flush(fh)
    core.release(fh)
    core.commit_pending()
    assert core.getattr(run.ino).changed_ns < clock.now - 60 * SECOND  # not rewritten
    clock.advance(30)
    core.rename(ROOT_INO, b"run", ROOT_INO, b"run.done", 0, ALICE)  # b/model.bin is recent
    clock.advance(61)
    with pytest.raises(Refused):
        core.rename(ROOT_INO, b"run.done", ROOT_INO, b"run.again", 0, ALICE)


def test_argument_errors_come_before_policy_refusals_and_are_audited(core: WormCore) -> None:
    ino = write_file(core, b"f", b"f")
    full = core.mkdir(ROOT_INO, b"full", 0o755, ALICE)
    core.mkdir(full.ino, b"sub", 0o755, ALICE)
    core.mkdir(ROOT_INO, b"empty", 0o755, ALICE)
    long = b"n" * 256
    calls = {
        "lookup": lambda: core.lookup(ROOT_INO, long, lambda: ALICE),
        "mknod": lambda: core.mknod(ROOT_INO, long, 0o010600, ALICE),
        "link": lambda: core.link(ino, ROOT_INO, long, ALICE),
        "rename": lambda: core.rename(ROOT_INO, b"f", ROOT_INO, b"g", 4, ALICE),
        "rmdir": lambda: core.rmdir(ROOT_INO, b"full", ALICE),
    }
    expected = {"lookup": errno.ENAMETOOLONG, "mknod": errno.ENAMETOOLONG,
                "link": errno.ENAMETOOLONG, "rename": errno.EINVAL, "rmdir": errno.ENOTEMPTY}
    for op, call in calls.items():
        with pytest.raises(Refused) as exc:
            call()
        assert exc.value.errno == expected[op], op
    with pytest.raises(Refused) as exc:
        core.rmdir(ROOT_INO, b"empty", ALICE)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(NotFound):
        core.lookup(ROOT_INO, b"n" * 255, lambda: ALICE)
    refused = [(r["op"], r["result"]) for r in records(core) if r["result"] != "ok"]
    assert refused == [("lookup", "ENAMETOOLONG"), ("mknod", "ENAMETOOLONG"),
                       ("link", "ENAMETOOLONG"), ("rename", "EINVAL"),
                       ("rmdir", "ENOTEMPTY"), ("rmdir", "EPERM")]


def test_a_listing_for_the_kernel_starts_with_dot_and_dotdot(core: WormCore) -> None:
    a = core.mkdir(ROOT_INO, b"a", 0o755, ALICE)
    write_file(core, b"f", b"f")
    assert [(n, i.ino) for n, i in core.readdir(a.ino, dots=True)] == [
        (b".", a.ino), (b"..", ROOT_INO)]
    assert [(n, i.ino) for n, i in core.readdir(ROOT_INO, dots=True)][:2] == [
        (b".", ROOT_INO), (b"..", ROOT_INO)]
    assert [n for n, _ in core.readdir(ROOT_INO)] == [b"a", b"f"]


def test_a_directory_keeps_count_of_its_subdirectories(core: WormCore, clock) -> None:
    a = core.mkdir(ROOT_INO, b"a", 0o755, ALICE)
    b = core.mkdir(ROOT_INO, b"b", 0o755, ALICE)
    core.mkdir(a.ino, b"x", 0o755, ALICE)
    write_file(core, b"f", b"f")
    assert [core.getattr(n).subdirs for n in (ROOT_INO, a.ino, b.ino)] == [2, 1, 0]
    core.rename(a.ino, b"x", b.ino, b"x", 0, ALICE)
    core.rename(ROOT_INO, b"f", a.ino, b"f", 0, ALICE)
    assert [core.getattr(n).subdirs for n in (ROOT_INO, a.ino, b.ino)] == [2, 0, 1]
    assert core.getattr(core.lookup(a.ino, b"f", lambda: ALICE).ino).subdirs == 0
