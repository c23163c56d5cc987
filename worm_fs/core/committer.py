"""The commit pipeline: one thread owns every LMDB write transaction (group commit).

A state change is a *job*: a function ``fn(tx, batch)`` that reads and writes one write
transaction and appends its audit records to ``batch``. Callers queue jobs from any
thread (:meth:`Committer.submit`, :meth:`Committer.run`); the committer thread takes
everything queued, runs the jobs one after the other in **one** transaction, commits
once (one synced commit for all of them) and then wakes every waiter. While it commits,
new jobs queue up for the next transaction, so the more writers there are, the more
changes share each fsync.

Contract:

* Jobs run on the committer thread, in submission order, with one exception: a run of
  consecutive jobs that each store chunks of one file (``group``, the file's inode) is
  regrouped file by file, each file's jobs still in their order. LMDB places values in
  the order they are put, so a file written beside others gets its chunks of one commit
  side by side in the data file, and a cold read of it reads less of the other files
  (the kernel reads the data file in read-ahead windows). Jobs of different groups
  must therefore commute. Jobs must not block on
  anything but the store: no waiting for tickets, no ``await``, no hashing of large
  buffers. They may take a writer's lock or the core lock briefly (lock order: a
  writer's ``guard``, then the core lock; never the other way round).
* A job may run more than once: if another job of the same batch raises, the
  transaction is aborted, the raising job fails alone (its caller gets the exception)
  and the others run again in a fresh transaction. So a job keeps its in-memory effects
  idempotent, and its caller applies what must happen only once after :meth:`Ticket.wait`.
* A failed commit fails every job of that transaction with the same error; none of them
  is durable, and ``on_failure`` is told (the core goes failsafe on I/O errors). On a
  full disk (:class:`~worm_fs.errors.NoSpace`) the jobs are first tried one per
  transaction, so a change that does not fit fails alone.
* Every transaction starts with the ``hooks``' deferred work (files created but not yet
  stored, seals decided at release) and tells the hooks whether it committed.
* Until :meth:`start` (recovery, core unit tests) and after :meth:`close`, jobs run
  *inline* on the caller's thread, one at a time, through the same code path. While the
  thread runs, only it may open write transactions (checked by the store).
* If the committer thread dies of a bug, every waiting and later ticket fails with
  :class:`~worm_fs.errors.StorageError`, ``on_failure`` is told once, and callers never
  hang.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from worm_fs.audit.log import AuditBatch, AuditLog
from worm_fs.errors import NoSpace, StorageError, WormError
from worm_fs.store import Store, WriteTxn

log = logging.getLogger(__name__)

JobFn = Callable[[WriteTxn, AuditBatch], Any]

#: Jobs in one transaction at most.
MAX_JOBS_PER_COMMIT = 512
#: Chunk bytes in one transaction at most (LMDB slows with hundreds of MiB dirty).
MAX_BYTES_PER_COMMIT = 32 << 20
#: A batch of chunk stores alone, while two files or more are stored, waits up to this
#: long for this many bytes.
LINGER_S = 0.06
LINGER_BYTES = 16 << 20
#: A pause after which the places of the chunks last stored are committed alone.
PLACES_IDLE_S = 0.1
#: Chunk bytes committed between two rounds of store housekeeping.
HOUSEKEEPING_BYTES = 16 << 20

#: Counters kept in ``meta`` by every commit, for ``worm-fs stats``.
COMMITS_KEY = "commits"
COMMIT_CHANGES_KEY = "commit_changes"
COMMIT_FLUSHES_KEY = "commit_flushes"
COMMIT_RECORDS_KEY = "commit_records"
#: Commits that held the flushes of two or more files (closes that shared one sync).
SHARED_COMMITS_KEY = "commits_shared"
#: Tiny commits made after a full-disk failure (see :meth:`Committer._nudge`).
NUDGES_KEY = "space_nudges"


class CommitHooks(Protocol):
    """What every transaction does besides its jobs (implemented by the core)."""

    def before_jobs(self, tx: WriteTxn, batch: AuditBatch) -> object:
        """Write deferred work first; returns a token for :meth:`after_commit`."""

    def after_commit(self, token: object, committed: bool) -> None:
        """Retire (``committed``) or forget (aborted) what the transaction held."""


class Ticket:
    """A queued job's outcome. :meth:`wait` blocks until its transaction is durable."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def _resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a ticket callback failed")

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the outcome is known (at once if it is already; else
        on the committer thread: it must only hand over, e.g. wake an event loop)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> Any:
        """The job's result once committed; raises the job's or the commit's error."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


@dataclass
class _Job:
    fn: JobFn
    ticket: Ticket
    nbytes: int = 0
    flushes: int = 0
    on_done: Callable[[BaseException | None], None] | None = None
    result: Any = None
    group: int | None = None


def _wake(tx: WriteTxn, batch: AuditBatch) -> None:
    """Queued only to end a linger; dropped from its batch, never run."""


def grouped(jobs: list[_Job]) -> list[_Job]:
    """``jobs`` with each run of consecutive grouped jobs reordered group by group (in
    the order each group first appears; stable within a group)."""
    out: list[_Job] = []
    run: dict[int, list[_Job]] = {}
    for job in jobs:
        if job.group is None:
            for members in run.values():
                out.extend(members)
            run.clear()
            out.append(job)
        else:
            run.setdefault(job.group, []).append(job)
    for members in run.values():
        out.extend(members)
    return out


class _JobFailed(Exception):
    def __init__(self, job: _Job, error: BaseException) -> None:
        super().__init__(str(error))
        self.job, self.error = job, error


class Committer:
    """The single writer of the store while serving; see the module docstring."""

    def __init__(
        self, store: Store, audit: AuditLog, hooks: CommitHooks,
        on_failure: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._hooks = hooks
        self._on_failure = on_failure
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Serializes inline transactions (before start, after close).
        self._inline = threading.Lock()
        #: Set when the thread died of a bug: every ticket fails with it.
        self._dead: StorageError | None = None
        self._ready = threading.Event()
        self._since_housekeeping = 0
        #: The files whose chunks the last batch stored.
        self._last_groups: set[int] = set()
        #: Callers inside :meth:`urgent`.
        self._urgent = 0
        self._urgent_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the committer thread; from now on it alone writes the store."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="worm-fs-committer",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()

    def close(self) -> None:
        """Commit everything queued, stop the thread; later jobs run inline again."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout=60)
        if thread.is_alive():
            log.error("the committer did not stop within 60 s")
            return
        self._thread = None
        self._store.set_writer_thread(None)
        # Jobs queued while the thread was stopping run inline, like any later job.
        late = self._drain_queue()
        with self._inline:
            if late:
                self._run(late)
            self._record_places()

    def _drain_queue(self) -> list[_Job]:
        jobs: list[_Job] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    # ------------------------------------------------------------------ submitting
    def submit(
        self, fn: JobFn, *, nbytes: int = 0, flushes: int = 0,
        on_done: Callable[[BaseException | None], None] | None = None,
        group: int | None = None,
    ) -> Ticket:
        """Queue ``fn`` for the next transaction; never blocks (inline: runs it now).

        ``nbytes`` (chunk bytes it writes) bounds the transaction's size; ``flushes``
        counts file flushes for the stats; ``on_done(error)`` runs on the committer
        thread right after the outcome is known, before waiters wake. ``group`` marks a
        job that only stores chunks of that file (see the module docstring).
        """
        job = _Job(fn, Ticket(), nbytes, flushes, on_done, group=group)
        if self._dead is not None:
            self._finish(job, self._dead)
        elif self._thread is None or threading.current_thread() is self._thread:
            with self._inline:
                self._run([job])
        else:
            self._queue.put(job)
            if self._dead is not None:  # it died after the check above: fail, never hang
                self._fail_queued(self._dead)
        return job.ticket

    def run(self, fn: JobFn, *, nbytes: int = 0, flushes: int = 0) -> Any:
        """Queue ``fn`` and wait until its transaction is durable; returns its result."""
        return self.submit(fn, nbytes=nbytes, flushes=flushes).wait()

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        self._store.set_writer_thread(threading.get_ident())
        self._ready.set()
        carry: _Job | None = None
        stopping = False
        jobs: list[_Job] = []
        try:
            while not stopping:
                first = carry if carry is not None else self._next_job()
                carry = None
                if first is None:
                    self._record_places()
                    return
                jobs, carry, stopping = self._take_batch(first)
                jobs = [job for job in jobs if job.fn is not _wake]  # nothing to commit
                if jobs:
                    self._run(grouped(jobs))
            if carry is not None:
                self._run([carry])
            self._record_places()
        except BaseException as exc:  # a bug: never leave callers waiting
            log.exception("the committer thread died")
            self._dead = StorageError(f"the commit pipeline stopped: {exc}")
            self._on_failure(self._dead)
            for job in jobs + ([carry] if carry is not None else []):
                if not job.ticket.done:
                    self._finish(job, self._dead)
            self._fail_queued(self._dead)

    def _next_job(self) -> _Job | None:
        """The next queued job (None: close). While the places of the chunks last
        stored are not recorded (the next commit records them), a pause of
        :data:`PLACES_IDLE_S` commits them alone, so a cold read soon after finds
        them."""
        while self._store.places_pending:
            try:
                return self._queue.get(timeout=PLACES_IDLE_S)
            except queue.Empty:
                self._record_places()
        return self._queue.get()

    def _record_places(self) -> None:
        try:
            self._store.record_places()
        except WormError as exc:  # only read hints: the next commit tries again
            log.warning("chunk places not recorded: %s", exc)

    def _take_batch(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """``first`` and what else is queued, up to the per-commit limits: (the jobs,
        a job left for the next batch, whether ``close`` was asked for).

        A batch of chunk stores alone, while two files or more are being stored (in
        it or in the batch before), waits up to :data:`LINGER_S` for
        :data:`LINGER_BYTES` (nobody waits for its commit: a writer that does waits in
        :meth:`urgent`), so each file's chunks of one commit form longer runs. One
        file's chunks alone are side by side anyway: no wait.
        """
        jobs, nbytes = [first], first.nbytes
        only_chunks = first.group is not None
        groups = {first.group} if first.group is not None else set()
        linger_until = time.monotonic() + LINGER_S
        while len(jobs) < MAX_JOBS_PER_COMMIT:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                wait = linger_until - time.monotonic()
                if (not only_chunks or len(groups | self._last_groups) < 2 or self._urgent
                        or nbytes >= LINGER_BYTES or wait <= 0):
                    break
                try:
                    job = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
            if job is None:
                return jobs, None, True
            if nbytes + job.nbytes > MAX_BYTES_PER_COMMIT:
                self._last_groups = groups
                return jobs, job, False
            jobs.append(job)
            nbytes += job.nbytes
            if job.group is None:
                only_chunks = False
            else:
                groups.add(job.group)
        self._last_groups = groups
        return jobs, None, False

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """While a caller waits for chunk stores to commit (a flush draining its
        file's chunks): no batch lingers, and one lingering now commits at once."""
        with self._urgent_lock:
            self._urgent += 1
        try:
            if self._thread is not None:  # ends a linger under way; dropped unrun
                self._queue.put(_Job(_wake, Ticket()))
            yield
        finally:
            with self._urgent_lock:
                self._urgent -= 1

    def _fail_queued(self, error: BaseException) -> None:
        for job in self._drain_queue():
            self._finish(job, error)

    # ------------------------------------------------------------------ one commit
    def _run(self, jobs: list[_Job], *, nudged: bool = False) -> None:
        """Commit ``jobs`` in one transaction; a job that raises fails alone.

        A failed job's caller is answered after the commit of the others, which also
        writes the refusal record the job noted: a refusal is durable when reported.
        """
        refused: list[tuple[_Job, BaseException]] = []
        while jobs or (refused and self._audit.pending):
            token: object = None
            try:
                with self._store.write() as tx:
                    batch = self._audit.batch(tx)
                    token = self._hooks.before_jobs(tx, batch)
                    for job in jobs:
                        try:
                            job.result = job.fn(tx, batch)
                        except Exception as exc:
                            raise _JobFailed(job, exc) from exc
                    self._count(tx, batch, jobs)
                    batch.finish()
            except _JobFailed as failed:
                self._hooks.after_commit(token, False)
                if not isinstance(failed.error, WormError):
                    log.error("a change failed unexpectedly", exc_info=failed.error)
                jobs = [job for job in jobs if job is not failed.job]
                refused.append((failed.job, failed.error))
                continue
            except Exception as exc:
                self._hooks.after_commit(token, False)
                if isinstance(exc, NoSpace) and not nudged:
                    # LMDB reuses the pages a commit freed only from the commit after
                    # next; a tiny commit makes room freed just now (a deletion) usable.
                    nudged = self._nudge()
                    if nudged:
                        continue
                if isinstance(exc, NoSpace) and len(jobs) > 1:
                    # One large change may not fit where the small ones would: each
                    # gets its own transaction, so only the ones that do not fit fail.
                    for job in jobs:
                        self._run([job], nudged=True)
                    break
                error = exc if isinstance(exc, WormError) else StorageError(
                    f"commit failed: {exc}")
                if not isinstance(exc, WormError):
                    log.exception("commit failed unexpectedly")
                self._on_failure(error)
                for job in jobs:
                    self._finish(job, error)
                break
            self._audit.committed(batch)
            self._hooks.after_commit(token, True)
            for job in jobs:
                self._finish(job, None)
            self._after_chunks(sum(job.nbytes for job in jobs))
            break
        for job, error in refused:
            self._finish(job, error)

    @staticmethod
    def _count(tx: WriteTxn, batch: AuditBatch, jobs: list[_Job]) -> None:
        """The batching counters shown by ``worm-fs stats``."""
        tx.add_counter(COMMITS_KEY, 1)
        tx.add_counter(COMMIT_CHANGES_KEY, len(jobs))
        flushes = sum(job.flushes for job in jobs)
        tx.add_counter(COMMIT_FLUSHES_KEY, flushes)
        if flushes > 1:
            tx.add_counter(SHARED_COMMITS_KEY, 1)
        tx.add_counter(COMMIT_RECORDS_KEY, batch.added)

    def _after_chunks(self, nbytes: int) -> None:
        """Every :data:`HOUSEKEEPING_BYTES` of stored chunks: keep the data file
        allocated ahead (a commit that grows the file also commits ext4's journal, 3x
        slower) and drop this process's mapping of the pages just written, so resident
        memory does not grow with the file. (Per commit, the re-faulting of the map
        cost more than the commit.)"""
        self._since_housekeeping += nbytes
        if self._since_housekeeping < HOUSEKEEPING_BYTES:
            return
        self._since_housekeeping = 0
        try:
            self._store.release_mapped_pages()
            self._store.ensure_headroom()
        except OSError as exc:
            log.warning("store housekeeping after a commit failed: %s", exc)

    def _nudge(self) -> bool:
        """A commit of one counter; True if it went through."""
        try:
            with self._store.write() as tx:
                tx.add_counter(NUDGES_KEY, 1)
        except WormError:
            return False
        return True

    def _finish(self, job: _Job, error: BaseException | None) -> None:
        if job.on_done is not None:
            try:
                job.on_done(error)
            except Exception:
                log.exception("a commit callback failed")
        job.ticket._resolve(job.result, error)
