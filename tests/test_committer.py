"""The commit pipeline: group commit, failure isolation, a dead committer, lock freedom.

These drive the core with its committer thread started (as the daemon does), and
control when the committer may commit with a gate job, so every assertion is about
an order of events, not about timing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from worm_fs.audit.log import AuditLog
from worm_fs.core.committer import Committer
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import Caller, Inode
from worm_fs.errors import Refused, StorageError
from worm_fs.store import Store

ALICE = Caller(uid=1000, gid=1000, pid=4242, comm="alice")


@pytest.fixture
def core(tmp_path: Path) -> Iterator[WormCore]:
    core = WormCore(Store(tmp_path), AuditLog(boot_id="test"), settle_s=0)
    core.initialize()
    core.start()
    yield core
    core.close()
    core.store.close()


class Gate:
    """A job that holds the committer until opened: what is queued meanwhile must
    share the next transaction."""

    def __init__(self, committer: Committer) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ticket = committer.submit(self._job)

    def _job(self, tx, batch) -> None:
        self.entered.set()
        assert self.release.wait(30)

    def __enter__(self) -> Gate:
        assert self.entered.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.ticket.wait()


def queued_jobs(core: WormCore) -> int:
    return core.committer._queue.qsize()


def wait_queued(core: WormCore, n: int) -> None:
    deadline = threading.Event()
    for _ in range(2000):
        if queued_jobs(core) >= n:
            return
        deadline.wait(0.005)
    raise AssertionError(f"only {queued_jobs(core)} of {n} jobs were queued")


def stored_inode(core: WormCore, ino: int) -> Inode | None:
    with core.store.read() as rt:
        raw = rt.get_inode(ino)
    return None if raw is None else Inode.from_bytes(raw)


def test_concurrent_closes_share_one_commit_and_each_returns_after_it(core: WormCore) -> None:
    writers = 8
    files = [core.create(ROOT_INO, f"f{i}".encode(), 0o644, os.O_WRONLY, ALICE)
             for i in range(writers)]
    for i, (fh, _) in enumerate(files):
        core.write(fh, 0, f"data {i}".encode())
    before = core.stats()
    durable_at_return: dict[int, bool] = {}

    def close(fh: int, ino: int) -> None:
        core.flush(fh)
        inode = stored_inode(core, ino)  # a fresh snapshot, right after flush returned
        durable_at_return[ino] = inode is not None and inode.clean and inode.size > 0

    threads = [threading.Thread(target=close, args=(fh, inode.ino)) for fh, inode in files]
    with Gate(core.committer):
        for thread in threads:
            thread.start()
        wait_queued(core, writers)
        assert not durable_at_return  # nobody returned while their commit could not happen
    for thread in threads:
        thread.join(10)
    after = core.stats()
    assert durable_at_return == {inode.ino: True for _, inode in files}
    assert after["commit_flushes"] - before["commit_flushes"] == writers
    # The gate's commit, then one for all eight flushes: fewer commits than closes.
    assert after["commits"] - before["commits"] == 2
    assert after["commits_shared"] - before["commits_shared"] == 1


def test_a_refused_change_in_a_batch_fails_only_its_own_caller(core: WormCore) -> None:
    core.mkdir(ROOT_INO, b"taken", 0o755, ALICE)
    results: dict[str, object] = {}

    def mkdir(name: bytes) -> None:
        try:
            results[name.decode()] = core.mkdir(ROOT_INO, name, 0o755, ALICE).ino
        except Refused as exc:
            results[name.decode()] = exc.errno

    threads = [threading.Thread(target=mkdir, args=(name,))
               for name in (b"a", b"taken", b"b")]
    with Gate(core.committer):
        for thread in threads:
            thread.start()
        wait_queued(core, 3)
    for thread in threads:
        thread.join(10)
    import errno

    assert results["taken"] == errno.EEXIST
    assert isinstance(results["a"], int) and isinstance(results["b"], int)
    assert {name for name, _ in core.readdir(ROOT_INO)} == {b"a", b"b", b"taken"}


def test_two_creators_of_one_name_never_both_succeed(core: WormCore) -> None:
    """A create (in memory) racing a mkdir (a job) of the same name."""
    with Gate(core.committer):
        outcome: list[object] = []
        thread = threading.Thread(target=lambda: outcome.append(
            _try(lambda: core.mkdir(ROOT_INO, b"same", 0o755, ALICE))))
        thread.start()
        wait_queued(core, 1)
        fh, _ = core.create(ROOT_INO, b"same", 0o644, os.O_WRONLY, ALICE)  # first: wins
    thread.join(10)
    assert isinstance(outcome[0], Refused) and outcome[0].errno == 17  # EEXIST
    core.release(fh)
    core.commit_pending()
    assert [name for name, _ in core.readdir(ROOT_INO)] == [b"same"]


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def test_lookups_stats_opens_and_writes_do_not_wait_for_a_commit(core: WormCore) -> None:
    fh, sealed = core.create(ROOT_INO, b"sealed", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"sealed bytes")
    core.release(fh)
    core.commit_pending()
    other, _ = core.create(ROOT_INO, b"busy", 0o644, os.O_WRONLY, ALICE)
    core.write(other, 0, b"x")

    def calls() -> None:
        assert core.lookup(ROOT_INO, b"sealed").ino == sealed.ino
        assert core.getattr(sealed.ino).size == len(b"sealed bytes")
        rfh, _ = core.open(sealed.ino, os.O_RDONLY, ALICE)
        assert core.read(rfh, 0, 100) == b"sealed bytes"
        core.release(rfh)
        new, _ = core.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, ALICE)
        assert core.write_buffered(new, 0, b"y" * 4096) is None  # nothing to wait for
        assert core.write_buffered(other, 1, b"more") is None
        assert [n for n, _ in core.readdir(ROOT_INO)] == [b"busy", b"new", b"sealed"]
        finished.set()

    finished = threading.Event()
    with Gate(core.committer):  # a commit is in progress and cannot finish
        threading.Thread(target=calls, daemon=True).start()
        assert finished.wait(10), "a call waited for the commit in progress"


def test_a_dead_committer_fails_its_callers_instead_of_hanging(core: WormCore) -> None:
    def bug(tx, batch) -> None:
        raise SystemExit("a bug that escapes the job")  # not an Exception: kills the loop

    core.committer.submit(bug)
    with pytest.raises(StorageError):
        core.mkdir(ROOT_INO, b"after", 0o755, ALICE)
    assert core.failsafe is not None


def test_only_the_committer_thread_writes_while_serving(core: WormCore) -> None:
    with pytest.raises(RuntimeError, match="outside the committer"):
        with core.store.write():
            pass


def test_two_flushes_of_one_file_commit_in_snapshot_order(
    core: WormCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two closes of one open file (dup'd descriptors) racing a write: the older
    snapshot must never overwrite the size the newer one stored."""
    import hashlib

    import worm_fs.core.files as files

    fh, inode = core.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"A" * 100)
    real = files.digest
    hashing, go = threading.Event(), threading.Event()

    def slow(data):
        if threading.current_thread().name == "first-close":
            hashing.set()
            assert go.wait(10)
        return real(data)

    monkeypatch.setattr(files, "digest", slow)
    first = threading.Thread(target=core.flush, args=(fh,), name="first-close")
    first.start()
    assert hashing.wait(10)  # the first close has its snapshot and is hashing it
    core.write(fh, 100, b"B" * 100)
    second = threading.Thread(target=core.flush, args=(fh,))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # it waits until the first one is queued
    go.set()
    first.join(10)
    second.join(10)
    assert stored_inode(core, inode.ino).size == 200
    core.release(fh)
    core.commit_pending()
    sealed = core.getattr(inode.ino)
    assert sealed.size == 200
    assert sealed.sha256 == hashlib.sha256(b"A" * 100 + b"B" * 100).hexdigest()


def test_a_truncate_between_two_flushes_is_not_undone(core: WormCore) -> None:
    from worm_fs.core.model import AttrChange

    fh, inode = core.create(ROOT_INO, b"t", 0o644, os.O_WRONLY, ALICE)
    core.write(fh, 0, b"X" * 100)
    threads = []
    with Gate(core.committer):  # all three jobs land in one transaction, in this order
        for target, args in ((core.flush, (fh,)),
                             (core.setattr, (inode.ino, AttrChange(size=0), fh, ALICE)),
                             (core.flush, (fh,))):
            threads.append(threading.Thread(target=target, args=args))
            threads[-1].start()
            wait_queued(core, len(threads))
    for thread in threads:
        thread.join(10)
    with core.store.read() as rt:
        assert list(rt.iter_manifest(inode.ino)) == []  # the cut chunk stays cut
    core.setattr(inode.ino, AttrChange(size=100), fh, ALICE)
    core.release(fh)
    core.commit_pending()
    rfh, _ = core.open(inode.ino, os.O_RDONLY, ALICE)
    assert core.read(rfh, 0, 100) == bytes(100)


def test_a_lost_create_race_leaves_no_claim_behind(core: WormCore) -> None:
    core.mkdir(ROOT_INO, b"d", 0o755, ALICE)
    for _ in range(3):
        with pytest.raises(Refused):
            core.create(ROOT_INO, b"d", 0o644, os.O_WRONLY, ALICE)
    assert core._claims == set()


def test_an_approval_never_orphans_a_file_created_in_its_directory(core: WormCore) -> None:
    """A create that lands while the approval's transaction is being built either makes
    the approval refuse (EBUSY) or is itself refused; never both succeed."""
    import errno

    from worm_fs.core.deletion import Deletions

    carol = Caller(uid=1003, gid=4242, pid=4243, comm="carol")
    runs = core.mkdir(ROOT_INO, b"runs", 0o755, ALICE)
    desk = Deletions(core, admin_gids=frozenset({4242}))
    req = desk.request("/runs", "cleanup", ALICE)
    outcome: list[object] = []
    with Gate(core.committer) as first:
        second = Gate(core.committer)
        approver = threading.Thread(target=lambda: outcome.append(
            _try(lambda: desk.approve(req.id, carol))))
        approver.start()
        wait_queued(core, 2)
        first.release.set()
        assert second.entered.wait(10)  # the approval's transaction is open
        fh, new = core.create(runs.ino, b"new.bin", 0o644, os.O_WRONLY, ALICE)
        second.release.set()
        approver.join(10)
    assert isinstance(outcome[0], Refused) and outcome[0].errno == errno.EBUSY
    core.write(fh, 0, b"precious")
    core.release(fh)
    core.commit_pending()
    assert core.lookup(runs.ino, b"new.bin").ino == new.ino
    # Once the file is sealed, a new request and approval remove everything.
    req = desk.request("/runs", "cleanup", ALICE)
    desk.approve(req.id, carol)
    assert [n for n, _ in core.readdir(ROOT_INO)] == []


def test_a_create_in_a_directory_being_deleted_is_refused_and_audited(
    core: WormCore,
) -> None:
    import errno

    from worm_fs.core.deletion import Deletions

    carol = Caller(uid=1003, gid=4242, pid=4243, comm="carol")
    runs = core.mkdir(ROOT_INO, b"runs", 0o755, ALICE)
    desk = Deletions(core, admin_gids=frozenset({4242}))
    req = desk.request("/runs", "cleanup", ALICE)
    with Gate(core.committer) as first:
        approver = threading.Thread(target=desk.approve, args=(req.id, carol))
        approver.start()
        wait_queued(core, 1)
        after = Gate(core.committer)  # runs in the same transaction, after the approval
        wait_queued(core, 2)
        first.release.set()
        assert after.entered.wait(10)  # the approval's job has run; not committed yet
        with pytest.raises(Refused) as refused:
            core.create(runs.ino, b"late.bin", 0o644, os.O_WRONLY, ALICE)
        after.release.set()
        approver.join(10)
    assert refused.value.errno == errno.ENOENT
    core.commit_pending()
    with core.store.read() as rt:
        records = [r for _, r in rt.iter_records()]
    assert any(b'"op":"create"' in r and b'"result":"ENOENT"' in r and b"late.bin" in r
               for r in records)
    assert [n for n, _ in core.readdir(ROOT_INO)] == []


def commits(core: WormCore) -> int:
    with core.store.read() as rt:
        return rt.get_counter("commits")


def recording_job(order: list[str], name: str):
    def job(tx, batch) -> None:
        order.append(name)
    return job


def test_chunk_stores_of_one_batch_run_file_by_file_between_other_jobs(
    core: WormCore,
) -> None:
    """Consecutive chunk stores of several files are regrouped per file (LMDB places
    a file's chunks side by side); a job that is not a chunk store keeps its place."""
    order: list[str] = []
    submit = core.committer.submit
    with Gate(core.committer):
        tickets = [submit(recording_job(order, name), group=group, nbytes=1)
                   for name, group in [("a1", 1), ("b1", 2), ("a2", 1), ("c1", 3),
                                       ("b2", 2)]]
        tickets.append(submit(recording_job(order, "flush")))
        tickets += [submit(recording_job(order, name), group=group, nbytes=1)
                    for name, group in [("b3", 2), ("a3", 1), ("b4", 2)]]
        wait_queued(core, len(tickets))
        before = commits(core)
    for ticket in tickets:
        ticket.wait()
    assert order == ["a1", "a2", "b1", "b2", "c1", "flush", "b3", "b4", "a3"]
    assert commits(core) == before + 2  # the gate's commit, then one for all nine


def test_chunk_stores_of_several_files_wait_for_more_unless_someone_waits(
    core: WormCore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of chunk stores alone, of two files or more, lingers for more (longer
    per-file runs); one file's alone does not (its chunks are side by side anyway);
    inside ``urgent()`` (a flush draining its chunks) nothing lingers."""
    import worm_fs.core.committer as committer_module

    monkeypatch.setattr(committer_module, "LINGER_S", 0.6)
    order: list[str] = []
    submit = core.committer.submit

    def done_within(ticket, seconds: float) -> bool:
        done = threading.Event()
        ticket.add_done_callback(done.set)
        return done.wait(seconds)

    alone = submit(recording_job(order, "a0"), group=1, nbytes=1)
    assert done_within(alone, 0.3)  # one file: no linger

    before = commits(core)
    with core.committer.urgent():  # nothing lingers: no wake-up, so no empty commit
        pass
    while queued_jobs(core):
        threading.Event().wait(0.005)
    threading.Event().wait(0.1)  # time for a commit of whatever was taken
    core.committer.run(recording_job(order, "sentinel"))
    assert commits(core) == before + 1

    with Gate(core.committer):
        first = [submit(recording_job(order, name), group=group, nbytes=1)
                 for name, group in [("a1", 1), ("b1", 2)]]
        wait_queued(core, 2)
        before = commits(core)
    threading.Event().wait(0.2)
    assert not any(ticket.done for ticket in first)  # lingering for more chunk stores
    second = submit(recording_job(order, "a2"), group=1, nbytes=1)
    for ticket in [*first, second]:
        ticket.wait()
    assert commits(core) == before + 2  # the gate's, then one for all three

    with Gate(core.committer):
        first = [submit(recording_job(order, name), group=group, nbytes=1)
                 for name, group in [("a3", 1), ("b3", 2)]]
        wait_queued(core, 2)
    with core.committer.urgent():  # a flush waits for chunks still being hashed
        assert all(done_within(ticket, 0.3) for ticket in first)  # the linger ended
        with Gate(core.committer):
            late = [submit(recording_job(order, name), group=group, nbytes=1)
                    for name, group in [("a4", 1), ("b4", 2)]]
            wait_queued(core, 2)
        # a batch begun while someone waits does not linger
        assert all(done_within(ticket, 0.3) for ticket in late)
    assert order == ["a0", "sentinel", "a1", "a2", "b1", "a3", "b3", "a4", "b4"]
