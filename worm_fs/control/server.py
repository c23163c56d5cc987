"""The control channel server: deletion requests and admin decisions over Unix sockets.

Two sockets in the runtime directory (checked and bound by :mod:`.runtime`):

* ``request.sock`` (mode 0666): anyone may ask for a deletion or list their requests;
* ``admin.sock`` (mode 0660, group = the admin group; 0600 without one): decisions,
  holds, retention, shares (read access), quotas, and the admins' ``delete_list``.
  Admin ops sent to the request socket are refused.

Identity is the peer's ``SO_PEERCRED`` (uid, gid, pid) plus its supplementary groups
read from ``/proc/PID/status``. Handler failures close only their own connection; core
calls run in worker threads.

Limits, per socket, so that a flood of one socket never touches the other, and per uid,
so that one user cannot fill a socket for everyone:

* at most :data:`MAX_CONNECTIONS` connections at once, and at most :data:`MAX_PER_UID`
  from one uid (the uid from ``SO_PEERCRED``, checked before anything else is read);
  a connection over either cap is answered "busy" (``EBUSY``) and closed;
* a whole message (up to the newline) must arrive within :data:`MESSAGE_TIMEOUT`
  seconds of the accept, or of the previous answer: a deadline, not an idle timeout,
  so trickling a byte at a time does not keep a connection;
* each answer must be taken by the peer within :data:`REPLY_TIMEOUT` seconds.

Refusals at a cap are counted per (socket, uid, cap) in :class:`Refusals` and reported
-- one log warning and one ``control_connect`` audit record carrying the count -- at
most once per :data:`REPORT_INTERVAL`: a record per attempt would let anyone grow the
audit log as fast as they can connect.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, NamedTuple

import trio

from worm_fs.control import protocol
from worm_fs.control.runtime import RuntimeDir
from worm_fs.core.deletion import Deletions
from worm_fs.core.model import Caller
from worm_fs.core.paths import iso_time
from worm_fs.errors import Refused, StoreBusy, WormError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_PER_UID = 8
MESSAGE_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
#: How long a refusal or a last error is given to reach the peer before the close.
PARTING_TIMEOUT = 1.0
REPORT_INTERVAL = 60.0
REQUEST_SOCKET = "request.sock"
ADMIN_SOCKET = "admin.sock"
#: Seconds before answering a request refused for its uid's rate (EAGAIN).
FLOOD_REPLY_DELAY = 1.0
#: Longest wait for the kernel to drop the names an approval removed before the
#: approver is answered anyway (its caches then expire on their own).
FORGET_TIMEOUT = 5.0

Removed = list[tuple[int, bytes, int]]


class Cred(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_cred(sock: Any) -> Cred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Cred(*struct.unpack("3i", raw))


def caller_of(cred: Cred) -> Caller:
    """The caller with ``cred``, its supplementary groups and process name from /proc."""
    groups: set[int] = set()
    comm = ""
    try:
        with open(f"/proc/{cred.pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = {int(g) for g in line.split()[1:]}
        with open(f"/proc/{cred.pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        pass
    return Caller(uid=cred.uid, gid=cred.gid, pid=cred.pid, comm=comm,
                  groups=frozenset(groups))


def peer_of(sock: Any) -> Caller:
    return caller_of(peer_cred(sock))


class RefusalKey(NamedTuple):
    socket: str
    uid: int
    #: "uid" (the per-uid cap) or "total" (the socket's cap)
    cap: str


class Refusals:
    """Connections refused at a cap: counted at once, reported in aggregate.

    The first refusal for a key is reported at once; later ones are counted and
    reported together, at most once per ``interval`` for each key, by :meth:`add` or by
    :meth:`flush` (which the server calls every ``interval``, so the count of an attack
    that stopped is reported too). ``report(key, count, cred)`` gets the number of
    refusals since the key's previous report and the credentials of the latest one.
    """

    def __init__(self, report: Callable[[RefusalKey, int, Cred], None],
                 interval: float = REPORT_INTERVAL) -> None:
        self.report = report
        self.interval = interval
        #: Every refusal since the start, by cap.
        self.total: Counter[str] = Counter()
        self._unreported: dict[RefusalKey, tuple[int, Cred]] = {}
        self._last_report: dict[RefusalKey, float] = {}

    def add(self, key: RefusalKey, cred: Cred, now: float) -> None:
        self.total[key.cap] += 1
        count, _ = self._unreported.get(key, (0, cred))
        self._unreported[key] = (count + 1, cred)
        if now - self._last_report.get(key, -math.inf) >= self.interval:
            self._report(key, now)

    def flush(self, now: float) -> None:
        """Report what is due; forget keys quiet for a whole interval."""
        for key in list(self._unreported):
            if now - self._last_report[key] >= self.interval:
                self._report(key, now)
        for key, when in list(self._last_report.items()):
            if key not in self._unreported and now - when >= self.interval:
                del self._last_report[key]

    def _report(self, key: RefusalKey, now: float) -> None:
        count, cred = self._unreported.pop(key)
        self._last_report[key] = now
        self.report(key, count, cred)


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
        on_changed: Callable[[list[int]], None] = lambda inos: None,
        admin_gid: int | None = None, max_connections: int = MAX_CONNECTIONS,
        max_per_uid: int = MAX_PER_UID, message_timeout: float = MESSAGE_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT, report_interval: float = REPORT_INTERVAL,
    ) -> None:
        self.deletions = deletions
        self.on_removed = on_removed
        #: Told the inodes whose attributes changed (the kernel caches them).
        self.on_changed = on_changed
        self.admin_gid = admin_gid
        self.max_connections = max_connections
        self.max_per_uid = max_per_uid
        self.message_timeout = message_timeout
        self.reply_timeout = reply_timeout
        #: Open connections per socket (False: request socket, True: admin socket), in
        #: all and by uid.
        self.active = {False: 0, True: 0}
        self.active_by_uid: dict[bool, Counter[int]] = {False: Counter(), True: Counter()}
        self.refusals = Refusals(self._report_refusals, report_interval)
        self._sockets: list[tuple[bool, socket.socket]] = []
        self.served = 0
        #: How handlers run: in a worker thread (tests may run them inline).
        self.run_handler: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync
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
            "quota_set": self._quota_set,
            "quota_show": lambda a, w: self.deletions.quotas.show(w),
            "share": lambda a, w: self.deletions.share(a["path"], w, a["mode"],
                                                       recursive=a["recursive"]),
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

    def _quota_set(self, args: dict[str, Any], who: Caller) -> dict[str, Any]:
        target, nbytes, files = args["target"], args["bytes"], args["files"]
        if target.startswith("uid:"):
            try:
                uid = int(target[4:])
            except ValueError:
                raise protocol.ProtocolError(f"quota_set: bad target {target[:64]!r}") from None
            return self.deletions.quotas.set(who, nbytes, files, uid=uid)
        return self.deletions.quotas.set(who, nbytes, files, path=target)

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

    async def _forget(self, removed: Removed) -> None:
        """Have ``on_removed`` drop the removed names from the kernel's caches before
        the approver is answered, so the names are gone for whoever looks next. It may
        block on the kernel, so it runs in a worker thread, bounded by
        :data:`FORGET_TIMEOUT`."""
        with trio.move_on_after(FORGET_TIMEOUT):
            await trio.to_thread.run_sync(self.on_removed, removed, abandon_on_cancel=True)

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
            nursery.start_soon(self._report_loop)
            task_status.started()

    async def _report_loop(self) -> None:
        while True:
            await trio.sleep(self.refusals.interval)
            self.refusals.flush(trio.current_time())

    def _report_refusals(self, key: RefusalKey, count: int, cred: Cred) -> None:
        why = (f"more than {self.max_per_uid} connections at once from uid {key.uid}"
               if key.cap == "uid" else f"more than {self.max_connections} connections at once")
        log.warning("control: refused %d connection(s) to %s from uid %d: %s", count,
                    key.socket, key.uid, why)
        core_log = self.deletions.core.log
        core_log.note(core_log.stamp(
            "control_connect", errno.EBUSY, reason=why, socket=key.socket, refused=count,
            uid=cred.uid, gid=cred.gid, pid=cred.pid))

    def _admit(self, cred: Cred, admin_socket: bool) -> WormError | None:
        """Take a connection slot for ``cred``, or say why not."""
        by_uid = self.active_by_uid[admin_socket]
        name = ADMIN_SOCKET if admin_socket else REQUEST_SOCKET
        if self.active[admin_socket] >= self.max_connections:
            cap, why = "total", "too many control connections; try again"
        elif by_uid[cred.uid] >= self.max_per_uid:
            cap, why = "uid", (f"too many control connections from uid {cred.uid} (at most "
                               f"{self.max_per_uid} at once); try again")
        else:
            self.active[admin_socket] += 1
            by_uid[cred.uid] += 1
            return None
        self.refusals.add(RefusalKey(name, cred.uid, cap), cred, trio.current_time())
        return StoreBusy(why)

    def _release(self, cred: Cred, admin_socket: bool) -> None:
        self.active[admin_socket] -= 1
        by_uid = self.active_by_uid[admin_socket]
        by_uid[cred.uid] -= 1
        if not by_uid[cred.uid]:
            del by_uid[cred.uid]

    async def _connection(self, stream: trio.SocketStream, admin_socket: bool) -> None:
        try:
            cred = peer_cred(stream.socket)
        except OSError:
            await _close(stream)
            return
        refusal = self._admit(cred, admin_socket)
        if refusal is not None:
            await _parting(stream, refusal)
            return
        try:
            await self._messages(stream, caller_of(cred), admin_socket)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._release(cred, admin_socket)
            self.served += 1
            await _close(stream)

    async def _messages(self, stream: trio.SocketStream, who: Caller,
                        admin_socket: bool) -> None:
        """Answer messages until the peer closes or misses a deadline."""
        buffer = bytearray()
        while True:
            line: bytes | None = None
            with trio.move_on_after(self.message_timeout) as deadline:
                try:
                    line = await _read_line(stream, buffer)
                except protocol.ProtocolError as exc:
                    await _parting(stream, exc)
                    return
            if deadline.cancelled_caught:
                if buffer:  # a message was begun: say why it gets no answer
                    await _parting(stream, protocol.ProtocolError(
                        f"no complete message within {self.message_timeout:g} seconds",
                        errno=errno.ETIMEDOUT))
                return
            if line is None:  # end of stream
                return
            reply = await self._dispatch(line, who, admin_socket)
            with trio.fail_after(self.reply_timeout):
                await stream.send_all(reply)

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
            result = await self.run_handler(handler, message.args, who)
            if isinstance(result, dict) and "_removed" in result:
                await self._forget(result.pop("_removed"))
            if isinstance(result, dict) and "_changed" in result:
                self.on_changed(result.pop("_changed"))
            return protocol.ok(result)
        except WormError as exc:
            if exc.errno == errno.EAGAIN:
                # Over its rate: answer late, so a client retrying in a loop costs the
                # daemon (whose event loop also serves FUSE) a few requests a second.
                await trio.sleep(FLOOD_REPLY_DELAY)
            return protocol.error(exc)
        except Exception:
            log.exception("control request failed")
            return protocol.error(WormError("internal error; see the daemon log"))


async def _read_line(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """The next line (without its newline) from ``buffer`` and then ``stream``; None at
    the end of the stream. Raises ProtocolError once ``MAX_MESSAGE`` bytes have come
    without a newline."""
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[:end + 1]
            return line
        if len(buffer) > protocol.MAX_MESSAGE:
            raise protocol.ProtocolError(
                f"message too long (more than {protocol.MAX_MESSAGE} bytes without a newline)")
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data


async def _parting(stream: trio.SocketStream, exc: WormError) -> None:
    """Send ``exc`` as the last answer, if the peer takes it at once, and close."""
    with trio.move_on_after(PARTING_TIMEOUT):
        try:  # the peer may be gone already: that must not end the server
            await stream.send_all(protocol.error(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await _close(stream)


async def _close(stream: trio.SocketStream) -> None:
    with trio.move_on_after(PARTING_TIMEOUT):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
