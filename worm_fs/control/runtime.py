"""The runtime directory: where the control sockets live, and why it can be trusted.

Whoever can write to the directory holding ``admin.sock`` (or to any directory above
it) can put a socket of her own there and read every admin's decisions. So the daemon
uses a runtime directory only if nobody but root and the daemon's own user can change
it, the rule OpenSSH's ``StrictModes`` applies to ``~/.ssh``:

* the runtime directory and every directory above it are owned by root or by the
  daemon's effective uid;
* none of them is writable by group or others, with one exception: a directory above
  the runtime directory may be world- or group-writable if it is sticky (``/tmp``,
  mode 1777), because in a sticky directory only an entry's owner (or root) can rename
  or remove it, and the entry below it has just been checked to be ours. (OpenSSH
  refuses sticky directories too; we accept them so that a runtime directory below
  ``/tmp`` works.) The runtime directory itself is never allowed to be writable by
  others, sticky or not.

The path is resolved once (``realpath``) and then walked from ``/`` one component at a
time with ``O_NOFOLLOW``, checking each directory through its descriptor before going
into it, so a symlink swapped in after the check is refused, not followed. Missing
directories are created (mode 0755) in a directory already checked; existing ones are
never changed: a wrong owner or mode is refused, not fixed. A refusal is
:class:`UnsafeRuntimeDir` (one line, exit code 2).

Sockets are bound through the directory's descriptor (``/proc/self/fd/N/NAME``), with
their mode set on the socket before ``bind`` (the kernel applies it less the umask), and
then, if the umask took bits away or a group is wanted, changed through an ``O_PATH``
descriptor of the node after checking it is a socket owned by the daemon: the check and
the change act on the same inode, and no path is followed.

At shutdown (:meth:`RuntimeDir.close`), after the daemon has removed its sockets, the
runtime directory is removed if this daemon created it and it is empty: through the
descriptor of the directory above it, and only if the name still leads to the very
directory it created (no link is followed). A directory the daemon found in place, or
one somebody else put something in, is left alone.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from worm_fs.errors import UnsafeRuntimeDir, UsageError

log = logging.getLogger(__name__)
#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
CREATED_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def check_directory(st: os.stat_result, where: str, *, final: bool) -> str | None:
    """Why a directory with these attributes is unsafe (None: it is safe)."""
    if st.st_uid not in trusted_uids():
        return (f"{where} is owned by uid {st.st_uid}, not by root or the daemon's "
                f"uid {os.geteuid()}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and (final or not mode & stat.S_ISVTX):
        return f"{where} is writable by {'group' if mode & 0o020 else 'others'} " \
            f"(mode {mode:04o})"
    return None


class RuntimeDir:
    """A checked runtime directory, held open by its descriptor."""

    def __init__(self, path: Path, fd: int, *, created_in: int = -1) -> None:
        self.path = path
        self.fd = fd
        #: The descriptor of the directory above, kept only if this one was created by
        #: :meth:`open` (and so is to be removed by :meth:`close`).
        self._created_in = created_in

    @classmethod
    def open(cls, path: Path, *, socket_names: tuple[str, ...] = ()) -> RuntimeDir:
        """Check (creating what is missing) the runtime directory ``path``.

        Raises :class:`UnsafeRuntimeDir` if it or a directory above it is unsafe,
        :class:`UsageError` if a socket path in it would not fit in ``sun_path``.
        """
        real = Path(os.path.realpath(path))
        for name in socket_names:
            if len(os.fsencode(real / name)) > MAX_SOCKET_PATH:
                raise UsageError(f"runtime directory {real}: the socket path {real / name} "
                                 f"is longer than {MAX_SOCKET_PATH} bytes")

        def refuse(why: str) -> UnsafeRuntimeDir:
            return UnsafeRuntimeDir(f"unsafe runtime directory {real}: {why}; fix it or "
                                    "choose another --runtime-dir")

        parts = real.parts[1:]
        where = Path("/")
        fd = os.open("/", _DIR_FLAGS)
        above, created = -1, False
        try:
            for depth in range(len(parts) + 1):
                if depth:
                    where = where / parts[depth - 1]
                    try:
                        child, created = _enter(fd, parts[depth - 1])
                    except OSError as exc:
                        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                            raise
                        raise refuse(f"{where} is not a directory (a symlink?)") from None
                    if above >= 0:
                        os.close(above)
                    above, fd = fd, child
                    if created:  # ours, just made in a checked directory: undo the umask
                        os.fchmod(fd, CREATED_MODE)
                why = check_directory(os.fstat(fd), str(where), final=depth == len(parts))
                if why:
                    raise refuse(why)
        except BaseException:
            os.close(fd)
            if above >= 0:
                os.close(above)
            raise
        if not created and above >= 0:
            os.close(above)
            above = -1
        return cls(real, fd, created_in=above)

    def listen(self, name: str, mode: int, gid: int | None) -> socket.socket:
        """A listening Unix socket ``name`` in this directory with ``mode`` and group."""
        self.remove(name)  # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind() creates the node with the socket's own mode less the umask: never
            # wider than wanted, so there is no moment where it is too open.
            os.fchmod(sock.fileno(), mode)
            sock.bind(f"/proc/self/fd/{self.fd}/{name}")
            self._set_mode(name, mode, gid)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return sock

    def _set_mode(self, name: str, mode: int, gid: int | None) -> None:
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            st = os.fstat(node)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                raise UnsafeRuntimeDir(f"{self.path / name} is not the socket just bound")
            via = f"/proc/self/fd/{node}"  # this inode, whatever the name points to now
            if gid is not None and st.st_gid != gid:
                os.chown(via, -1, gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(via, mode)
        finally:
            os.close(node)

    def remove(self, name: str) -> None:
        if self.fd < 0:  # closed already
            return
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Close the directory; remove it first if :meth:`open` created it and it is
        empty now (remove the sockets before). Never raises for the removal."""
        if self.fd < 0:
            return
        try:
            if self._created_in >= 0:
                self._remove_created()
        finally:
            os.close(self.fd)
            self.fd = -1
            if self._created_in >= 0:
                os.close(self._created_in)
                self._created_in = -1

    def _remove_created(self) -> None:
        name = self.path.name
        try:
            found = os.stat(name, dir_fd=self._created_in, follow_symlinks=False)
            ours = os.fstat(self.fd)
            if (found.st_dev, found.st_ino) != (ours.st_dev, ours.st_ino):
                log.warning("%s is no longer the directory this daemon created; left "
                            "alone", self.path)
                return
            os.rmdir(name, dir_fd=self._created_in)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                log.info("left %s in place: something else was put in it", self.path)
            else:
                log.warning("could not remove %s: %s", self.path, exc.strerror)


def _enter(parent: int, name: str) -> tuple[int, bool]:
    """Open directory ``name`` in ``parent`` without following a symlink, creating it if
    missing; also says whether this call created it."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent), False
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, CREATED_MODE, dir_fd=parent)
        created = True
    except FileExistsError:  # someone was faster: whatever it is gets checked
        created = False
    return os.open(name, _DIR_FLAGS, dir_fd=parent), created
