"""The control channel's wire format: versioned JSON lines.

A request is one line, a JSON object ``{"v": 1, "op": NAME, ...arguments}``; the answer
is one line, ``{"v": 1, "ok": true, "result": ...}`` or ``{"v": 1, "ok": false,
"error": MESSAGE, "errno": NAME, "exit": CODE}``. A line longer than
:data:`MAX_MESSAGE` bytes, invalid JSON, an unknown op or a badly typed argument is
answered with an error and changes nothing. Fields that claim an identity are never
read: who is asking comes from ``SO_PEERCRED``.
"""

from __future__ import annotations

import errno as errno_mod
import json
from dataclasses import dataclass
from typing import Any

from worm_fs.errors import EXIT_USAGE, WormError

VERSION = 1
MAX_MESSAGE = 64 * 1024

#: op -> (argument -> type) for ops anyone may send, then those only admins may send.
PUBLIC_OPS: dict[str, dict[str, type]] = {
    "hello": {},
    "delete_request": {"path": str, "reason": str},
    "delete_list": {},
}
ADMIN_OPS: dict[str, dict[str, type]] = {
    "delete_approve": {"id": str, "reason": str},
    "delete_reject": {"id": str, "reason": str},
    "hold_set": {"path": str, "reason": str},
    "hold_clear": {"path": str},
    "retain": {"path": str, "until_ns": int, "reason": str},
    # target: a path in the mount (a tree quota) or "uid:N"; a limit of -1: none
    "quota_set": {"target": str, "bytes": int, "files": int},
    "quota_show": {},
}
OPTIONAL = {("delete_approve", "reason"), ("retain", "reason")}


class ProtocolError(WormError):
    """Malformed message."""

    errno = errno_mod.EINVAL
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Message:
    op: str
    args: dict[str, Any]


def parse(line: bytes) -> Message:
    """Validate one request line; raises ProtocolError saying what is wrong."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError(f"message longer than {MAX_MESSAGE} bytes")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("malformed message: not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed message: not an object")
    if data.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {data.get('v')!r} (want {VERSION})")
    op = data.get("op")
    if not isinstance(op, str):
        raise ProtocolError("malformed message: no op")
    schema = PUBLIC_OPS.get(op) or ADMIN_OPS.get(op)
    if schema is None and op not in PUBLIC_OPS:
        raise ProtocolError(f"unknown op {op[:64]!r}")
    args: dict[str, Any] = {}
    for name, kind in (schema or {}).items():
        value = data.get(name)
        if value is None and (op, name) in OPTIONAL:
            value = kind()
        if type(value) is not kind:
            raise ProtocolError(f"{op}: argument {name!r} must be {kind.__name__}")
        if kind is str and len(value) > 4096:
            raise ProtocolError(f"{op}: argument {name!r} is too long")
        args[name] = value
    return Message(op=op, args=args)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def ok(result: Any) -> bytes:
    return encode({"v": VERSION, "ok": True, "result": result})


def error(exc: WormError) -> bytes:
    return encode({
        "v": VERSION, "ok": False, "error": exc.message,
        "errno": errno_mod.errorcode.get(exc.errno, str(exc.errno)), "exit": exc.exit_code,
    })
