"""Wiring: open the store, recover, mount, serve, and shut down cleanly.

Order of start-up (a failure at any step exits non-zero with a one-line message):

1. take ``STATE_DIR/daemon.lock`` (a second daemon on the same store is refused);
2. open the store, clear stale LMDB reader slots, create the root on first use;
   check (creating what is missing) the runtime directory for the control sockets
   (:mod:`worm_fs.control.runtime`: a directory another user could change is refused);
3. recover files left writing by a crash (seal or quarantine, audited), count each
   directory's subdirectories once in a store an older version made, then start the
   core's committer and hasher threads (from now on only the committer writes);
4. set a 0.5 ms GIL switch interval (lookup latency while those threads work), mount,
   then report readiness (``--ready-fd`` for ``worm-fs mount``, ``READY=1``
   to systemd when ``NOTIFY_SOCKET`` is set);
5. serve until SIGTERM/SIGINT or an external unmount, with background tasks for the
   audit group commit (every 50 ms) and automatic checkpoints.

Shutdown commits buffered audit records, records the unmount, unmounts and closes the
store. Files still open for writing are left to recovery at the next start.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import grp
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from worm_fs import fuse_ops
from worm_fs.audit.anchor import ensure_key, fix_origin, write_checkpoint
from worm_fs.audit.log import NEXT_SEQ_KEY, AuditLog
from worm_fs.control.runtime import RuntimeDir
from worm_fs.control.server import ADMIN_SOCKET, REQUEST_SOCKET, ControlServer
from worm_fs.core.clock import advance_clock
from worm_fs.core.deletion import Deletions
from worm_fs.core.fs import WormCore
from worm_fs.errors import StoreBusy, UsageError, WormError
from worm_fs.store import Store, uploads
from worm_fs.store.reserve import SpaceReserve

log = logging.getLogger(__name__)

GROUP_COMMIT_INTERVAL = 0.05
GIL_SWITCH_INTERVAL = 0.0005
MAPPED_TRIM_INTERVAL = 0.5
MAPPED_TRIM_KIB = 32 << 10
LOCK_FILE = "daemon.lock"
BUCKET_CHECKPOINT_SECONDS = 1.0


@dataclass
class MountOptions:
    settle: float = 60.0
    settle_limit: float = 86_400.0
    allow_other: bool = False
    audit_reads: str = "handle"  # or "each"
    checkpoint_records: int = 10_000
    checkpoint_seconds: float = 300.0
    #: The log's origin, fixed at the store's first mount (None: worm-fs/<store id>).
    log_origin: str | None = None
    admin_group: str | None = None
    seal_read_mode: int = 0  # read bits added at seal (and mkdir); 0: none
    seal_group: str | None = None
    retention_days: float = 0.0
    max_retention_days: float = 36_525.0
    request_ttl_days: float = 7.0
    runtime_dir: Path | None = None
    read_ahead_kib: int = 4096
    open_rate_limit: float = 0.0
    bucket: str | None = None  # s3://BUCKET[/PREFIX]
    s3_endpoint: str | None = None
    object_lock: str = "compliance"
    object_retention_days: float = 30.0
    replicate: str = "async"
    witnesses: tuple[str, ...] = ()  # URL=VKEY of each witness asked to cosign
    #: A read-only replica of the primary whose bucket this is (s3://BUCKET[/PREFIX]).
    replica: str | None = None
    pubkey: str | None = None  # the primary's verifier key (replicas)
    cache_size_gib: float = 8.0
    poll_seconds: float = 5.0
    debug_fuse: bool = False


def resolve_group(name: str | None) -> int | None:
    """A group name or number as a gid; UsageError if there is no such group."""
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UsageError(f"no such group: {name}") from None


def lock_state_dir(state_dir: Path) -> int:
    """Take the daemon lock; raises StoreBusy naming the holder."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreBusy(
            f"another worm-fs daemon (pid {holder}) is serving {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def mapped_store_kib() -> int:
    """File-backed resident memory of this process (mostly the store's map), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    return 0


def keep_freed_memory() -> None:
    """Let glibc reuse freed 1 MiB request buffers instead of returning them to the OS.

    Every FUSE write arrives in a fresh 1 MiB buffer; with glibc's defaults these come
    from mmap and go back with munmap, so each one costs 256 page faults and zeroing.
    Raising the mmap and trim thresholds keeps them on the heap for reuse.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 32 << 20)


def set_read_ahead(mountpoint: Path, kib: int) -> None:
    """Set the kernel read-ahead of our mount's backing device (root only).

    FUSE mounts start with 128 KiB, which caps each read request at that size; sealed
    files are read front to back, so a larger window means fewer, larger requests.
    Found through /proc/self/mountinfo: stat() on the mount would ask this very daemon.
    """
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mountpoint):
                device = fields[2]
                break
        else:
            return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.info("could not set read-ahead to %d KiB (%s)", kib, exc.strerror)


def sd_notify(message: str) -> None:
    """Send a state line to systemd if we run under it (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


class Daemon:
    def __init__(self, state_dir: Path, mountpoint: Path, options: MountOptions) -> None:
        self.state_dir = state_dir
        self.mountpoint = mountpoint
        self.options = options
        self.lock_fd = lock_state_dir(state_dir)
        self.store = Store(state_dir)
        # Everything stored from now on (recovery's seals included) is queued for upload.
        self.store.replicating = options.bucket is not None
        stale = self.store.clear_stale_readers()
        if stale:
            log.info("cleared %d stale reader slots", stale)
        self.log = AuditLog()
        self.core = WormCore(
            self.store, self.log, settle_s=options.settle,
            settle_limit_s=options.settle_limit,
            audit_reads_each=options.audit_reads == "each",
            retention_days=options.retention_days,
            open_rate_limit=options.open_rate_limit,
            seal_read_mode=options.seal_read_mode,
            seal_gid=resolve_group(options.seal_group),
        )
        created = self.core.initialize()
        self.replica = self._replica_role(created)
        self.store_id = self.core.store_id()
        # Checked before recovery writes anything or the mount goes up: an unsafe
        # runtime directory refuses the start (UnsafeRuntimeDir, exit 2).
        self.runtime = RuntimeDir.open(
            options.runtime_dir or Path("/run/worm-fs") / self.store_id,
            socket_names=(REQUEST_SOCKET, ADMIN_SOCKET))
        self.runtime_dir = self.runtime.path
        admin_gid = resolve_group(options.admin_group)
        self.reserve = SpaceReserve(state_dir)
        self.reserve.take()
        self.deletions = Deletions(
            self.core, admin_gids=frozenset() if admin_gid is None else frozenset({admin_gid}),
            request_ttl_s=options.request_ttl_days * 86_400, make_room=self.reserve.release,
            max_retention_days=options.max_retention_days,
        )
        self.control = ControlServer(self.deletions, on_removed=self._forget_removed_now,
                                     on_changed=fuse_ops.notify_changed,
                                     admin_gid=admin_gid)
        self.origin = fix_origin(self.store, state_dir, options.log_origin)
        self.key = ensure_key(state_dir, self.origin)
        forgot_bucket = options.bucket is None and self.replica is None and \
            uploads.forget_bucket(self.store)
        started = time.monotonic()
        recovered = self.core.recover()
        if recovered["sealed"] or recovered["quarantined"]:
            log.warning(
                "recovery: sealed %d file(s), quarantined %d file(s) in %.2fs",
                len(recovered["sealed"]), len(recovered["quarantined"]),
                time.monotonic() - started,
            )
        if recovered["layouts"]:
            log.warning("recorded the layout digests of %d file(s) sealed by an older version",
                        len(recovered["layouts"]))
        counted = self.core.count_subdirs()
        if counted:
            log.info("counted the subdirectories of %d directories made by an older version",
                     len(counted))
        self.core.start()  # from now on only the committer thread writes the store
        if forgot_bucket:
            log.warning("this store replicated to a bucket and is mounted without "
                        "--bucket: nothing is uploaded now, and the next mount with a "
                        "bucket queues the whole store again")
        self.uploader = self._start_uploader()
        self.follower = self._start_follower()
        self.witnesser = self._start_witnesser()
        self.core.root_xattrs[b"user.worm.pid"] = str(os.getpid()).encode()
        self.core.root_xattrs[b"user.worm.pubkey"] = self.key.verifier_key().encode()
        self.core.root_xattrs[b"user.worm.control"] = str(
            self.runtime_dir / REQUEST_SOCKET).encode()
        self.core.root_xattrs[b"user.worm.admin_control"] = str(
            self.runtime_dir / ADMIN_SOCKET).encode()
        self._last_checkpoint_size = -1
        #: The size of the last checkpoint kept for good (not transient).
        self._last_kept_size = 0

    def run(self, ready_fd: int | None = None) -> None:
        keep_freed_memory()
        # The event loop answers lookups while the hasher and committer threads work;
        # with the default 5 ms switch interval a stat waits up to that long for the GIL.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self.sync_barrier = self._sync_barrier()
        self.ops = ops = fuse_ops.WormOperations(
            self.core, in_bucket=self.sync_barrier.uploaded if self.sync_barrier else None)
        try:
            self.control.listen(self.runtime)
            self._record("mount", mountpoint=str(self.mountpoint),
                         settle=self.options.settle, settle_limit=self.options.settle_limit,
                         audit_reads=self.options.audit_reads,
                         open_rate_limit=self.options.open_rate_limit or None,
                         seal_read_mode=f"{self.options.seal_read_mode:04o}"
                         if self.options.seal_read_mode else None,
                         seal_gid=self.core.seal_gid)
            fuse_ops.mount(ops, str(self.mountpoint), allow_other=self.options.allow_other,
                           debug=self.options.debug_fuse)
        except BaseException:
            self._remove_sockets()
            raise
        try:
            trio.run(self._serve, ready_fd)
        finally:
            try:
                self.core.flush_throttled(everything=True)
                self.core.commit_pending()
                self._record("unmount", mountpoint=str(self.mountpoint),
                             open_writers=self.core.open_writers())
                self.checkpoint()
            except WormError as exc:
                log.error("could not record the unmount (%s); recovery will sort out the "
                          "rest at the next start", exc.message)
            finally:
                fuse_ops.unmount()
                self._remove_sockets()
                if self.follower is not None:
                    self.follower.stop()
                    self.core.chunk_source.close()  # type: ignore[union-attr]
                if self.uploader is not None:
                    self.uploader.stop()  # what it did not upload stays queued
                if self.witnesser is not None:
                    self.witnesser.stop()  # the last checkpoint is asked at the next mount
                self.core.close()
                self.store.close()
                os.close(self.lock_fd)

    def _start_witnesser(self) -> Any:
        if not self.options.witnesses:
            return None
        from worm_fs.audit.witness import Witness, Witnesser

        try:
            witnesses = [Witness.parse(spec) for spec in self.options.witnesses]
        except ValueError as exc:
            raise UsageError(f"bad --witness: {exc}") from None
        witnesser = Witnesser(self.store, lambda fn: self.core.commit(
            lambda tx, batch: fn(tx)), witnesses)
        witnesser.start()
        return witnesser

    def _replica_role(self, created: bool) -> str | None:
        """The bucket URL this store follows (a replica), or None (a primary). A store
        is one or the other for life."""
        from worm_fs.replication.follower import SOURCE
        from worm_fs.replication.s3 import BucketUrl

        with self.store.read() as rt:
            follows = (rt.get_meta(SOURCE) or b"").decode() or None
        wanted = str(BucketUrl.parse(self.options.replica)) if self.options.replica else None
        if wanted is None and follows is not None:
            raise UsageError(f"{self.state_dir} is a replica of {follows}: mount it with "
                             f"--replica {follows} --pubkey KEY")
        if wanted is None:
            return None
        if follows is None and not created and not self._blank_replica():
            raise UsageError(f"{self.state_dir} holds a primary's store: a replica needs "
                             "a state directory of its own")
        if follows is not None and follows != wanted:
            raise UsageError(f"{self.state_dir} is a replica of {follows}, not {wanted}")
        if self.options.bucket is not None:
            raise UsageError("--replica and --bucket: a replica publishes its own log "
                             "beside the primary's in the replica's bucket; drop --bucket")
        if not self.options.pubkey:
            raise UsageError("--replica needs --pubkey KEY: the primary's verifier key "
                             "(worm-fs log pubkey on the primary)")
        self.core.read_only = f"a replica of {wanted}"
        self.store.replicating = True  # its own log goes to the bucket
        return wanted

    def _blank_replica(self) -> bool:
        """A store made by a replica mount that stopped before its first follow."""
        with self.store.read() as rt:
            return next(iter(rt.iter_dirents(1)), None) is None and \
                rt.get_counter("files") == 0

    def _start_follower(self) -> Any:
        if self.replica is None:
            return None
        from worm_fs.audit.checkpoint import CheckpointError, VerifierKey
        from worm_fs.replication.chunk_cache import ChunkCache
        from worm_fs.replication.follower import Follower
        from worm_fs.replication.replica_reads import ReplicaChunks
        from worm_fs.replication.s3 import Bucket, BucketUrl

        try:
            verifier = VerifierKey.parse(self.options.pubkey or "")
        except CheckpointError as exc:
            raise UsageError(f"bad --pubkey: {exc}") from None
        bucket = Bucket(BucketUrl.parse(self.replica), endpoint=self.options.s3_endpoint,
                        lock_mode=None)
        cache = ChunkCache(self.state_dir / "cache", int(self.options.cache_size_gib * (1 << 30)))
        chunks = ReplicaChunks(self.store, bucket, cache)
        follower = Follower(self.core, bucket, verifier, chunks,
                            poll_s=self.options.poll_seconds)
        chunks.on_refused = follower.note_refused_file
        chunks.on_replaced = follower.note_replaced
        self.core.chunk_source = chunks
        follower.poll_safely()  # what the bucket holds now, before the mount goes up
        return follower  # polling starts once the kernel knows the mount (_serve)

    def _start_uploader(self) -> Any:
        if self.replica is not None:
            return self._start_replica_log_upload()
        if self.options.bucket is None:
            return None  # and the queue was forgotten before recovery
        from worm_fs.replication.s3 import BucketUrl
        from worm_fs.replication.uploader import queue_existing

        url = BucketUrl.parse(self.options.bucket)
        queued = queue_existing(self.core, str(url))
        if queued:
            log.info("replication to %s: queued %d objects already in the store", url, queued)
        return self._uploader_to(url)

    def _uploader_to(self, url: Any) -> Any:
        """The uploader to ``url`` (a BucketUrl) with the mount's lock settings."""
        from worm_fs.replication.s3 import Bucket
        from worm_fs.replication.uploader import Uploader

        bucket = Bucket(url, endpoint=self.options.s3_endpoint,
                        lock_mode=self.options.object_lock,
                        retention_days=self.options.object_retention_days)
        uploader = Uploader(self.core, bucket)
        uploader.start()
        return uploader

    def _sync_barrier(self) -> Any:
        """With ``--replicate sync``, what holds each close() until the bucket has it."""
        if self.uploader is None or self.replica is not None or \
                self.options.replicate != "sync":
            return None
        from worm_fs.replication.sync_barrier import SyncBarrier

        def unconfirmed(ino: int) -> None:  # rides the final commit of the shutdown
            self.core.log.note(self.core.log.stamp(
                "replicate_unconfirmed", errno.EIO, ino=ino,
                detail="unmounted before the bucket confirmed the upload"))

        return SyncBarrier(self.store, self.checkpoint, self.uploader.wake,
                           on_unconfirmed=unconfirmed)

    def _start_replica_log_upload(self) -> Any:
        """A replica's own audit log goes to ``replicas/<store id>/`` beside the
        primary's objects (log tiles and checkpoints only: it stores no chunks)."""
        from worm_fs.replication.s3 import BucketUrl
        from worm_fs.replication.uploader import queue_existing

        primary = BucketUrl.parse(self.replica or "")
        url = BucketUrl(primary.bucket, f"{primary.prefix}replicas/{self.store_id}/")
        queue_existing(self.core, str(url), log_only=True)
        return self._uploader_to(url)

    def _remove_sockets(self) -> None:
        for name in (REQUEST_SOCKET, ADMIN_SOCKET):
            self.runtime.remove(name)
        self.runtime.close()

    def _forget_removed(self, removed: list[tuple[int, bytes, int]]) -> None:
        for parent, name, ino in reversed(removed):
            fuse_ops.notify_deleted(parent, name, ino)

    @staticmethod
    def _forget_removed_now(removed: list[tuple[int, bytes, int]]) -> None:
        """The control server's: blocks until the kernel dropped the names (a worker
        thread runs it), so an approver's next look no longer finds them."""
        for parent, name, ino in reversed(removed):
            fuse_ops.forget_deleted(parent, name, ino)

    def _advance_clock(self) -> None:
        self.core.commit(lambda tx, batch: advance_clock(tx, self.core.clock()))

    def _record(self, op: str, **fields: object) -> None:
        self.core.record(op, pid=os.getpid(), **fields)

    def checkpoint(self, *, transient: bool = False) -> int:
        """Sign the current tree head (in a commit); returns its size. ``transient``:
        for the bucket only, replaced by the next one (``write_checkpoint``)."""
        note = self.core.commit(lambda tx, batch: write_checkpoint(
            tx, self.key, self.origin, batch.size, batch.root(), transient=transient))
        self._last_checkpoint_size = size = int(note.split("\n")[1])
        if self.witnesser is not None:
            self.witnesser.wake()
        return size

    async def _serve(self, ready_fd: int | None) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._group_commit)
            nursery.start_soon(self._checkpoints)
            nursery.start_soon(self._trim_mapped_pages)
            if self.sync_barrier is not None:
                nursery.start_soon(self.sync_barrier.run)
            await nursery.start(self.control.serve)
            nursery.start_soon(self._serve_fuse, nursery.cancel_scope)
            # The kernel's FUSE INIT sets the mount's read-ahead; raise it only after that.
            await self.ops.initialized.wait()
            set_read_ahead(self.mountpoint, self.options.read_ahead_kib)
            if self.follower is not None:  # its changes reach the kernel's caches now
                self.follower.on_removed = self._forget_removed
                self.follower.on_changed = fuse_ops.notify_changed
                self.follower.start()
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            sd_notify("READY=1")
            log.info("serving %s from %s", self.mountpoint, self.state_dir)

    async def _serve_fuse(self, cancel_scope: trio.CancelScope) -> None:
        await fuse_ops.serve(sync_waits=self.sync_barrier is not None)
        sd_notify("STOPPING=1")
        cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s, unmounting", signal.Signals(signum).name)
                if self.sync_barrier is not None:  # the FUSE loop waits for its handlers
                    self.sync_barrier.close()
                fuse_ops.stop_serving()
                return

    async def _group_commit(self) -> None:
        failing = False
        while True:
            await trio.sleep(GROUP_COMMIT_INTERVAL)
            try:
                self.core.flush_throttled()
                if not self.core.has_pending():
                    continue
                await trio.to_thread.run_sync(self.core.commit_pending)
            except WormError as exc:
                if not failing:
                    log.error("audit log cannot be written (%s); refusing opens until it "
                              "can, retrying", exc.message)
                failing = True
                continue
            except Exception:
                log.exception("audit group commit failed unexpectedly; will retry")
                failing = True
                continue
            if failing:
                log.warning("audit log writable again")
            failing = False

    async def _trim_mapped_pages(self) -> None:
        """Keep the store's mapped pages from piling up in our resident memory."""
        while True:
            await trio.sleep(MAPPED_TRIM_INTERVAL)
            with background_errors("trimming mapped pages"):
                if mapped_store_kib() > MAPPED_TRIM_KIB:
                    await trio.to_thread.run_sync(self.store.release_mapped_pages)

    async def _checkpoints(self) -> None:
        self._last_checkpoint_time = self._last_kept_time = trio.current_time()
        ticks = 0
        while True:
            await trio.sleep(1.0)
            ticks += 1
            with background_errors("housekeeping"):
                await self._housekeeping(ticks)

    async def _housekeeping(self, ticks: int) -> None:
        """Once a second: the space reserve, the clock high-water mark, checkpoints."""
        if not self.reserve.held:
            await trio.to_thread.run_sync(self.reserve.take)
        await trio.to_thread.run_sync(self.store.ensure_headroom)
        if ticks % 60 == 1 and self.core.failsafe is None:
            await trio.to_thread.run_sync(self._advance_clock)
        with self.store.read() as rt:  # one counter, not all of stats(): on the loop
            size = rt.get_counter(NEXT_SEQ_KEY)
        if size == self._last_checkpoint_size:
            return
        now = trio.current_time()
        kept_due = size - self._last_kept_size >= self.options.checkpoint_records or \
            now - self._last_kept_time >= self.options.checkpoint_seconds
        # With a bucket, the log there must follow closely: a checkpoint (and its tiles)
        # every second while records come in; between the kept ones, each replaces the
        # one before, so the store does not keep one per second.
        bucket_due = self.uploader is not None and \
            now - self._last_checkpoint_time >= BUCKET_CHECKPOINT_SECONDS
        if kept_due:
            self._last_kept_size = await trio.to_thread.run_sync(self.checkpoint)
            self._last_kept_time = now
        elif bucket_due:
            await trio.to_thread.run_sync(partial(self.checkpoint, transient=True))
        else:
            return
        self._last_checkpoint_time = now


@contextmanager
def background_errors(what: str) -> Iterator[None]:
    """Keep a background task alive: expected errors in one line, bugs with a traceback."""
    try:
        yield
    except WormError as exc:
        log.warning("%s failed (%s); will retry", what, exc.message)
    except Exception:
        log.exception("%s failed unexpectedly; will retry", what)
