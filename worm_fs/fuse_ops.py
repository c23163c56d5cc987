"""The pyfuse3 adapter: translates FUSE requests into core calls. The only module that
imports :mod:`pyfuse3`.

Contract:

* Handlers hold no policy. They build a :class:`~worm_fs.core.model.Caller`, call the
  core, and turn :class:`~worm_fs.errors.WormError` into ``FUSEError(errno)``. Any other
  exception is logged with its traceback and answered with ``EIO``; the daemon stays up.
* Core calls that may block (they wait for a group commit, or hash or read chunks) run
  in worker threads via ``trio.to_thread.run_sync``. Lookups and calls that never wait
  for I/O (create, buffered writes, opens, refusals, quick releases) run inline: the
  core holds its locks only for in-memory updates, and a thread hop costs more than
  such a call (about 0.2 ms here).
* Calls that wait for a commit have their own, large limiter: a commit serves every
  change queued while the previous one synced, so the more of them wait at once, the
  fewer syncs per change. CPU-bound reads keep a small one.
* Every mutating handler is implemented, so refusals are deliberate and audited rather
  than pyfuse3's default ``ENOSYS``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from worm_fs.core.committer import Ticket
from worm_fs.core.fs import WormCore
from worm_fs.core.model import AttrChange, Caller, Inode, Kind, State
from worm_fs.core.paths import NAME_MAX
from worm_fs.errors import WormError

log = logging.getLogger(__name__)

#: How long the kernel may cache names and attributes that can no longer change.
IMMUTABLE_TIMEOUT = 3600.0
#: Directory attributes change as entries are added.
DIR_ATTR_TIMEOUT = 1.0
#: A file being written changes through this kernel (which drops its cached size and
#: times after each write) and at its seal: its writer's ``flush`` (each ``close()``)
#: and ``release`` drop them, so a ``stat`` after ``close()`` asks again. Caching them
#: spares the GETATTR after each create (the kernel's permission check of the new
#: file) and the one for the writer's ``fstat``.
WRITING_ATTR_TIMEOUT = 1.0
BLKSIZE = 1 << 20

T = TypeVar("T")


def _guard(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map product errors to their errno; log anything else and answer EIO."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except WormError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("unexpected error in %s; answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace")
    except OSError:
        return ""


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(8192)
    except OSError:
        return ()
    return tuple(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)


def caller_of(ctx: pyfuse3.RequestContext, *, with_cmdline: bool = False) -> Caller:
    return Caller(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, comm=_comm(ctx.pid),
                  cmdline=_cmdline(ctx.pid) if with_cmdline else ())


def entry_attributes(inode: Inode, *, writer_open: bool = False) -> pyfuse3.EntryAttributes:
    """``inode`` for the kernel. A file being written has its attributes cached only
    while its writer holds it open (``writer_open``); once released, until its seal
    is committed, every ``stat`` asks again."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = inode.ino
    attr.generation = 0
    if inode.kind is Kind.DIR:
        attr.entry_timeout, attr.attr_timeout = IMMUTABLE_TIMEOUT, DIR_ATTR_TIMEOUT
    elif inode.kind is Kind.FILE and inode.state is State.WRITING:
        attr.entry_timeout = IMMUTABLE_TIMEOUT
        attr.attr_timeout = WRITING_ATTR_TIMEOUT if writer_open else 0
    else:
        attr.entry_timeout, attr.attr_timeout = IMMUTABLE_TIMEOUT, IMMUTABLE_TIMEOUT
    attr.st_mode = inode.st_mode()
    attr.st_nlink = inode.st_nlink()
    attr.st_uid = inode.uid
    attr.st_gid = inode.gid
    attr.st_rdev = 0
    attr.st_size = inode.size
    attr.st_blksize = BLKSIZE
    attr.st_blocks = (inode.size + 511) // 512
    attr.st_atime_ns = inode.atime_ns
    attr.st_mtime_ns = inode.mtime_ns
    attr.st_ctime_ns = inode.ctime_ns
    return attr


async def _committed_ticket(ticket: Ticket) -> None:
    """Wait for a commit without a thread: the committer wakes this loop."""
    if ticket.done:
        return
    event = trio.Event()
    token = trio.lowlevel.current_trio_token()
    ticket.add_done_callback(lambda: token.run_sync_soon(event.set))
    await event.wait()


class WormOperations(pyfuse3.Operations):
    """FUSE request handlers over a :class:`WormCore`."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, core: WormCore, *, threads: int = 4, commit_waiters: int = 64,
                 in_bucket: Callable[..., Awaitable[None]] | None = None) -> None:
        """``in_bucket`` (``--replicate sync``) is awaited after the commit of a writer's
        flush and of every fsync, with the file's inode and ``writer=`` whether the
        handle is the file's writer: it returns once the bucket has what that commit
        made durable."""
        super().__init__()
        self.core = core
        self._in_bucket = in_bucket
        self._limiter = trio.CapacityLimiter(threads)
        self._commit_limiter = trio.CapacityLimiter(commit_waiters)
        self._follow_up_limiter = trio.CapacityLimiter(commit_waiters)
        self._dirs: dict[int, list[tuple[bytes, Inode]]] = {}
        #: Files opened by a reader while being written, until their first open sealed.
        self._read_while_writing: set[int] = set()
        self._next_dir_fh = 1
        #: Set once the kernel's INIT request has been answered.
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()  # runs on the trio thread, inside pyfuse3's main loop

    def _attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        return entry_attributes(inode, writer_open=inode.state is State.WRITING
                                and self.core.has_writer(inode.ino))

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """A call that reads or hashes chunks (CPU-bound)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _committed(self, fn: Callable[..., T], *args: Any) -> T:
        """A call that waits for a group commit (mostly idle meanwhile)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._commit_limiter)

    # -- lookups -------------------------------------------------------------------
    @_guard
    async def lookup(self, parent_inode, name, ctx):
        return self._attributes(self.core.lookup(parent_inode, name, lambda: caller_of(ctx)))

    @_guard
    async def getattr(self, inode, ctx):
        return self._attributes(self.core.getattr(inode))

    @_guard
    async def readlink(self, inode, ctx):
        return self.core.readlink(inode)

    @_guard
    async def opendir(self, inode, ctx):
        # The whole listing, . and .. first; readdir offsets are indexes into it, so a
        # reply cut short, telldir/seekdir and rewinddir resume where they should.
        entries = self.core.readdir(inode, dots=True)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dirs[fh] = entries
        return fh

    @_guard
    async def readdir(self, fh, start_id, token):
        entries = self._dirs.get(fh, [])
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode), index + 1):
                break

    @_guard
    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @_guard
    async def fsyncdir(self, fh, datasync):
        return None

    @_guard
    async def statfs(self, ctx):
        st = self.core.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = BLKSIZE
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = NAME_MAX  # what the core refuses beyond, with ENAMETOOLONG
        return out

    @_guard
    async def getxattr(self, inode, name, ctx):
        try:
            return self.core.getxattr(inode, name)
        except WormError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @_guard
    async def listxattr(self, inode, ctx):
        return self.core.listxattr(inode)

    async def forget(self, inode_list):
        return None  # nothing is ever removed through the mount, so no lookup counts

    # -- creating names ------------------------------------------------------------
    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, inode = self.core.create(
            parent_inode, name, mode, flags, caller_of(ctx, with_cmdline=True)
        )
        # Write-only: direct I/O, no page-cache copy and no security.capability
        # GETXATTR per write. An O_WRONLY descriptor cannot be mmapped anyway; a
        # read-write one keeps the cache, so shared writable maps work.
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        return (pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=write_only),
                entry_attributes(inode, writer_open=True))

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        inode = await self._committed(self.core.mkdir, parent_inode, name, mode, caller_of(ctx))
        return entry_attributes(inode)

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        inode = await self._committed(
            self.core.symlink, parent_inode, name, target, caller_of(ctx)
        )
        return entry_attributes(inode)

    # -- refused or restricted changes ---------------------------------------------
    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self.core.mknod(parent_inode, name, mode, caller_of(ctx))
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.core.link(inode, new_parent_inode, new_name, caller_of(ctx))
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        self.core.unlink(parent_inode, name, caller_of(ctx))

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        self.core.rmdir(parent_inode, name, caller_of(ctx))

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        self.core.setxattr(inode, name, caller_of(ctx))

    @_guard
    async def removexattr(self, inode, name, ctx):
        self.core.removexattr(inode, name, caller_of(ctx))

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._committed(
            functools.partial(
                self.core.rename, parent_inode_old, name_old, parent_inode_new, name_new,
                flags, caller_of(ctx), exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
            )
        )

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        change = AttrChange(
            mode=attr.st_mode & 0o7777 if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if change.is_empty():
            return self._attributes(self.core.getattr(inode))
        result = await self._committed(self.core.setattr, inode, change, fh, caller_of(ctx))
        return self._attributes(result)

    # -- file handles --------------------------------------------------------------
    @_guard
    async def open(self, inode, flags, ctx):
        fh, node = self.core.open(inode, flags, caller_of(ctx))
        sealed = node.kind is Kind.FILE and node.state is not State.WRITING
        if not sealed:
            # Its writer may write around the page cache (direct I/O) after this
            # reader filled some of it: the first open after the seal drops the cache
            # rather than keeping it for every later reader.
            self._read_while_writing.add(inode)
        elif inode in self._read_while_writing:
            self._read_while_writing.discard(inode)
            sealed = False
        return pyfuse3.FileInfo(fh=fh, keep_cache=sealed)

    @_guard
    async def read(self, fh, off, size):
        data = self.core.read_resident(fh, off, size)  # in the page cache: no thread hop
        return data if data is not None else await self._off_loop(self.core.read, fh, off, size)

    @_guard
    async def write(self, fh, off, buf):
        follow_up = self.core.write_buffered(fh, off, buf)
        if follow_up is not None:
            # Its own limiter: flushes waiting in drain() hold the commit waiters'
            # slots, and they wait for exactly these submissions.
            await trio.to_thread.run_sync(follow_up, limiter=self._follow_up_limiter)
        return len(buf)

    @_guard
    async def flush(self, fh):
        await self._flush(fh)
        ino, writer = self.core.handle_file(fh)
        if writer:
            # Before close() returns: a stat after it asks the daemon, which has taken
            # the release (queued first) and answers with the seal's mode.
            forget_attributes(ino)
        if self._in_bucket is not None and writer:  # a reader's close never waits
            await self._in_bucket(ino)

    async def _flush(self, fh: int) -> None:
        if self.core.flush_is_noop(fh):
            return
        pending = self.core.flush_start(fh)
        if pending is None:  # large, or waiting for the storer: in a thread
            await self._committed(self.core.flush, fh)
            return
        await _committed_ticket(pending.ticket)
        pending.finish()

    @_guard
    async def fsync(self, fh, datasync):
        await self._committed(self.core.fsync, fh)
        if self._in_bucket is not None:
            ino, writer = self.core.handle_file(fh)
            await self._in_bucket(ino, writer=writer)

    @_guard
    async def release(self, fh):
        try:
            ino, writer = self.core.handle_file(fh)
        except WormError:  # not open (EBADF): nothing to release
            return
        try:
            if not self.core.release_if_quick(fh):
                await self._committed(self.core.release, fh)
        finally:
            if writer:
                # Sealed (or quarantined): what another process's stat cached between
                # the flush and now, with the writer still registered, is stale.
                forget_attributes(ino)


# -- session control, used by the daemon ---------------------------------------------
def mount(ops: WormOperations, mountpoint: str, *, allow_other: bool, debug: bool = False) -> None:
    options = set(pyfuse3.default_options)
    options |= {"fsname=worm-fs", "subtype=worm-fs"}
    if allow_other:
        options.add("allow_other")
    if debug:
        options.add("debug")
    pyfuse3.init(ops, mountpoint, options)


#: Requests served at once. A handler that waits holds one: a ``close()`` waiting for
#: a group commit briefly, one waiting for the bucket (``--replicate sync``) as long as
#: the bucket is away, so a sync mount gets room for that many more.
MAX_TASKS = 64
MAX_SYNC_WAITERS = 1024


async def serve(*, sync_waits: bool = False) -> None:
    """Serve requests until :func:`stop_serving`. ``sync_waits``: handlers may wait for
    the bucket; the mount keeps serving everything else while up to
    :data:`MAX_SYNC_WAITERS` of them do (idle tasks end, so the room costs nothing
    until it is used)."""
    await pyfuse3.main(min_tasks=4,
                       max_tasks=MAX_TASKS + (MAX_SYNC_WAITERS if sync_waits else 0))


def stop_serving() -> None:
    pyfuse3.terminate()


def unmount(*, clean: bool = True) -> None:
    pyfuse3.close(unmount=clean)


def notify_deleted(parent: int, name: bytes, ino: int) -> None:
    """Drop a removed name from the kernel's caches (safe from inside a handler)."""
    pyfuse3.invalidate_entry_async(parent, name, deleted=ino, ignore_enoent=True)


def forget_deleted(parent: int, name: bytes, ino: int) -> None:
    """Drop a removed name from the kernel's caches and return once it is dropped.

    Blocks on the kernel, which may ask the event loop to forget inodes meanwhile:
    call it from a worker thread, never from a handler or the event loop.
    """
    try:
        pyfuse3.invalidate_entry(parent, name, deleted=ino)
    except OSError:  # not in the kernel's cache (or its parent is not): nothing to drop
        pass


def forget_attributes(ino: int) -> None:
    """Drop the kernel's cached attributes of ``ino`` (attributes only, no pages, so
    it is safe inside a handler: the kernel holds no lock of ``ino`` for it)."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError:  # not in the kernel's cache: nothing to drop
        pass


def notify_changed(inos: list[int]) -> None:
    """Drop the cached attributes of ``inos`` (their mode changed: ``worm-fs share``).
    Called from the control server."""
    for ino in inos:
        forget_attributes(ino)
