"""The CLI's side of the control channel: one request, one answer, over a Unix socket."""

from __future__ import annotations

import errno as errno_mod
import json
import socket
import struct
from pathlib import Path
from typing import Any

from worm_fs.control import protocol
from worm_fs.errors import (
    EXIT_BUSY,
    EXIT_REFUSED,
    EXIT_USAGE,
    NotAStore,
    NotFound,
    Refused,
    StoreBusy,
    UnknownDaemon,
    UsageError,
    WormError,
)

TIMEOUT = 60.0


class SocketDenied(Refused):
    """The caller may not connect to this socket (its mode or group)."""


def call(socket_path: Path, op: str, *, daemon_pid: int | None = None, **args: Any) -> Any:
    """Send ``op`` and return its result; a refusal raises the matching WormError.

    With ``daemon_pid`` (the pid the mount publishes), the message is sent only if the
    process listening on the socket is that daemon or runs as root (``SO_PEERCRED`` of
    the listener): a socket planted by another user gets nothing.
    """
    answer = bytearray()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(socket_path))
            if daemon_pid is not None:
                check_listener(sock, socket_path, daemon_pid)
            try:
                sock.sendall(protocol.encode({"v": protocol.VERSION, "op": op, **args}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a daemon at its connection cap answers "busy" and closes: read it
            while not answer.endswith(b"\n"):
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
    except PermissionError:
        raise SocketDenied(f"permission denied on {socket_path} (admins only)") from None
    except FileNotFoundError:
        raise NotAStore(f"{socket_path} is missing: is the daemon running?") from None
    except OSError as exc:
        raise WormError(f"control socket {socket_path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(answer)
    except ValueError:
        raise StoreBusy("the daemon closed the connection without an answer; try again") \
            from None
    if reply.get("ok"):
        return reply.get("result")
    raise _error(reply)


def check_listener(sock: socket.socket, socket_path: Path, daemon_pid: int) -> None:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", raw)
    if pid != daemon_pid and uid != 0:
        raise UnknownDaemon(f"{socket_path} is served by pid {pid} (uid {uid}), not by this "
                            f"mount's daemon (pid {daemon_pid}); nothing was sent")


def _error(reply: dict[str, Any]) -> WormError:
    message = str(reply.get("error", "request failed"))
    err = getattr(errno_mod, str(reply.get("errno")), errno_mod.EIO)
    code = reply.get("exit")
    if err == errno_mod.ENOENT:
        return NotFound(message)
    if code == EXIT_REFUSED:
        return Refused(message, errno=err)
    if code == EXIT_BUSY:
        return StoreBusy(message)
    if code == EXIT_USAGE:
        return UsageError(message)
    return WormError(message, errno=err)
