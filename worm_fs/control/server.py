"""The control channel server: deletion requests and admin decisions over Unix sockets.

Two sockets in the runtime directory (checked and bound by :mod:`.runtime`):

* ``request.sock`` (mode 0666): anyone may ask for a deletion or list requests;
* ``admin.sock`` (mode 0660, group = the admin group; 0600 without one): decisions,
  holds, retention. Admin ops sent to the request socket are refused.

Identity is the peer's ``SO_PEERCRED`` (uid, gid, pid) plus its supplementary groups
read from ``/proc/PID/status``. Each connection has an idle timeout, at most
:data:`MAX_CONNECTIONS` are served at once (more are answered "busy" and closed), and a
handler failure closes only its own connection. Core calls run in worker threads.
The cap is per socket, so flooding the request socket does not lock admins out.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import trio

from worm_fs.control import protocol
from worm_fs.control.runtime import RuntimeDir
from worm_fs.core.deletion import Deletions
from worm_fs.core.model import Caller
from worm_fs.core.paths import iso_time
from worm_fs.errors import Refused, StoreBusy, WormError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 10.0
REQUEST_SOCKET = "request.sock"
ADMIN_SOCKET = "admin.sock"

Removed = list[tuple[int, bytes, int]]


def peer_of(sock: Any) -> Caller:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups: set[int] = set()
    comm = ""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = {int(g) for g in line.split()[1:]}
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        pass
    return Caller(uid=uid, gid=gid, pid=pid, comm=comm, groups=frozenset(groups))


def request_view(req: Any, state: str | None = None) -> dict[str, Any]:
    view = asdict(req)
    view["state"] = state or req.state
    view["created_at"] = iso_time(req.created_ns)
    view["expires_at"] = iso_time(req.expires_ns)
    return view


def _maybe_view(req: Any) -> dict[str, Any] | None:
    """A request's view, for operations that need a second admin only sometimes."""
    return None if req is None else request_view(req)


class ControlServer:
    def __init__(
        self, deletions: Deletions, *, on_removed: Callable[[Removed], None],
        admin_gid: int | None = None, max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.deletions = deletions
        self.on_removed = on_removed
        self.admin_gid = admin_gid
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        #: Open connections per socket (False: request socket, True: admin socket), so a
        #: flood on the request socket cannot lock admins out.
        self.active = {False: 0, True: 0}
        self._sockets: list[tuple[bool, socket.socket]] = []
        self.served = 0
        self._handlers: dict[str, Callable[[dict[str, Any], Caller], Any]] = {
            "hello": lambda a, w: {"version": protocol.VERSION, "uid": w.uid},
            "delete_request": self._delete_request,
            "delete_list": self._delete_list,
            "delete_approve": self._delete_approve,
            "delete_reject": lambda a, w: request_view(
                self.deletions.reject(a["id"], w, a["reason"])),
            "hold_set": lambda a, w: _maybe_view(
                self.deletions.hold_set(a["path"], w, a["reason"])),
            "hold_clear": lambda a, w: self.deletions.hold_clear(a["path"], w),
            "retain": lambda a, w: {"until": iso_time(a["until_ns"]), "request": _maybe_view(
                self.deletions.retain(a["path"], w, a["until_ns"], a["reason"]))},
        }
        assert self._handlers.keys() == protocol.OPS.keys()

    # ------------------------------------------------------------------ ops
    def _delete_request(self, args: dict[str, Any], who: Caller) -> dict[str, Any]:
        return request_view(self.deletions.request(args["path"], args["reason"], who))

    def _delete_list(self, args: dict[str, Any], who: Caller) -> list[dict[str, Any]]:
        """Admins see every request; other users see their own (paths and reasons of
        others' requests are not theirs to read)."""
        admin = self.deletions.is_admin(who)
        return [request_view(r, state) for r, state in self.deletions.list()
                if admin or r.requester_uid == who.uid]

    def _delete_approve(self, args: dict[str, Any], who: Caller) -> dict[str, Any]:
        req, removed = self.deletions.approve(args["id"], who, args["reason"])
        return dict(request_view(req), _removed=removed)

    # ------------------------------------------------------------------ serving
    def listen(self, runtime: RuntimeDir) -> None:
        """Bind both sockets in ``runtime`` (checked by :meth:`RuntimeDir.open`); before
        the event loop runs, so a refusal is a plain one-line error."""
        self._sockets = [
            (False, runtime.listen(REQUEST_SOCKET, 0o666, None)),
            (True, runtime.listen(ADMIN_SOCKET, 0o660 if self.admin_gid is not None
                                  else 0o600, self.admin_gid)),
        ]

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the sockets bound by :meth:`listen`."""
        async with trio.open_nursery() as nursery:
            for admin, sock in self._sockets:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(
                    trio.serve_listeners,
                    lambda stream, admin=admin: self._connection(stream, admin),
                    [listener],
                )
            task_status.started()

    async def _connection(self, stream: trio.SocketStream, admin_socket: bool) -> None:
        if self.active[admin_socket] >= self.max_connections:
            try:  # the peer may be gone already: that must not end the server
                with trio.move_on_after(1):
                    await stream.send_all(
                        protocol.error(StoreBusy("too many control connections")))
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            return
        self.active[admin_socket] += 1
        try:
            who = peer_of(stream.socket)
            buffer = bytearray()
            while True:
                data = b""
                with trio.move_on_after(self.idle_timeout):
                    data = await stream.receive_some(65536)
                if not data:  # end of stream, or idle too long
                    return
                buffer += data
                while b"\n" in buffer:
                    line, _, rest = bytes(buffer).partition(b"\n")
                    buffer = bytearray(rest)
                    reply = await self._dispatch(line, who, admin_socket)
                    with trio.fail_after(self.idle_timeout):
                        await stream.send_all(reply)
                if len(buffer) > protocol.MAX_MESSAGE:
                    with trio.move_on_after(1):
                        await stream.send_all(protocol.error(
                            protocol.ProtocolError("message too long")))
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return
        except Exception:
            log.exception("control connection failed")
        finally:
            self.active[admin_socket] -= 1
            self.served += 1
            with trio.move_on_after(1):
                await stream.aclose()

    async def _dispatch(self, line: bytes, who: Caller, admin_socket: bool) -> bytes:
        try:
            message = protocol.parse(line)
            if message.admin and not admin_socket:
                why = "admin operations go through the admin socket"
                self.deletions.core.log.note(self.deletions.core.log.stamp(
                    message.op, errno.EPERM, reason=why, uid=who.uid, gid=who.gid,
                    pid=who.pid, comm=who.comm))
                raise Refused(why, errno=errno.EPERM)
            handler = self._handlers[message.op]
            result = await trio.to_thread.run_sync(handler, message.args, who)
            if isinstance(result, dict) and "_removed" in result:
                self.on_removed(result.pop("_removed"))
            return protocol.ok(result)
        except WormError as exc:
            return protocol.error(exc)
        except Exception:
            log.exception("control request failed")
            return protocol.error(WormError("internal error; see the daemon log"))
