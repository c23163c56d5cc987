"""One exception tree for worm-fs.

Every error the product raises on purpose is a :class:`WormError`. Each class knows
the errno a FUSE caller receives and the exit code the CLI returns; the docstring of a
class is its default message. The FUSE adapter and the CLI translate these and nothing
else: any other exception is a bug, answered with ``EIO`` (daemon) or exit code 70 (CLI).

CLI exit codes (documented in the README):

====  ==========================================================
0     success
1     a check found a problem (corruption, a tampered log)
2     usage error, no such path, not a worm-fs store or mount, an unsafe runtime
      directory (the daemon refuses to start), a control socket not served by the
      mount's daemon (the CLI refuses to send)
3     refused by policy (permission, WORM rule)
4     the store is busy (another daemon owns the state directory)
5     storage error (full disk or map, I/O error)
70    internal error (a bug; the message says where to look)
====  ==========================================================
"""

from __future__ import annotations

import errno as _errno

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_BUSY = 4
EXIT_STORAGE = 5
EXIT_INTERNAL = 70


class WormError(Exception):
    """worm-fs error."""

    errno: int = _errno.EIO
    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str | None = None, *, errno: int | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])
        if errno is not None:
            self.errno = errno

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(WormError):
    """Invalid arguments."""

    errno = _errno.EINVAL
    exit_code = EXIT_USAGE


class NotFound(WormError):
    """No such file or directory."""

    errno = _errno.ENOENT
    exit_code = EXIT_USAGE


class NotAStore(WormError):
    """Not a worm-fs store or mount."""

    errno = _errno.ENOENT
    exit_code = EXIT_USAGE


class UnsafeRuntimeDir(UsageError):
    """The runtime directory, or a directory above it, can be changed by another user."""


class UnknownDaemon(UsageError):
    """The control socket is not served by the daemon of this mount."""


class Refused(WormError):
    """Refused by the write-once policy."""

    errno = _errno.EPERM
    exit_code = EXIT_REFUSED


class StoreBusy(WormError):
    """Another worm-fs daemon already serves this state directory."""

    errno = _errno.EBUSY
    exit_code = EXIT_BUSY


class NoSpace(WormError):
    """No space left in the store (disk or LMDB map full)."""

    errno = _errno.ENOSPC
    exit_code = EXIT_STORAGE


class StorageError(WormError):
    """The store could not be read or written."""

    errno = _errno.EIO
    exit_code = EXIT_STORAGE


class Corruption(WormError):
    """Stored data failed its integrity check."""

    errno = _errno.EIO
    exit_code = EXIT_CHECK_FAILED


class LogTampered(WormError):
    """The audit log failed verification."""

    errno = _errno.EIO
    exit_code = EXIT_CHECK_FAILED


class UntrustedData(WormError):
    """Bytes from outside the store (a replica's bucket) failed their check: refused,
    never served; unlike :class:`Corruption` the store itself is not damaged, so the
    daemon does not go failsafe."""

    errno = _errno.EIO
    exit_code = EXIT_CHECK_FAILED
