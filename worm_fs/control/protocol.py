"""The control channel's wire format: versioned JSON lines.

A request is one line, a JSON object ``{"v": 1, "op": NAME, ...arguments}``; the answer
is one line, ``{"v": 1, "ok": true, "result": ...}`` or ``{"v": 1, "ok": false,
"error": MESSAGE, "errno": NAME, "exit": CODE}``. Fields that claim an identity are
never read: who is asking comes from ``SO_PEERCRED``.

Every operation and every argument is in one table, :data:`OPS`; :func:`parse` checks
a message against it and nothing else does. A message is refused with a
:class:`ProtocolError` (one line, ``EINVAL``, exit code 2), and changes nothing, if it

* is longer than :data:`MAX_MESSAGE` bytes, is not UTF-8 JSON, is nested deeper than
  Python's parser goes, or is not an object;
* repeats a key (``{"op": "hello", "op": "retain"}``: which one counts would depend on
  the parser);
* has a ``v`` other than the integer 1 (``true`` and ``1.0`` are not 1 here), or an
  ``op`` not in the table;
* lacks a required argument, or gives one of another type: the JSON type must match
  exactly, so ``true`` and ``1.5`` are not integers and ``5`` is not a string; integers
  must lie in the argument's range, strings within its length.

Unknown extra fields are ignored.
"""

from __future__ import annotations

import errno as errno_mod
import json
from dataclasses import dataclass
from typing import Any

from worm_fs.errors import EXIT_USAGE, WormError

VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_TEXT = 4096
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Arg:
    """One argument's type: ``str`` of at most ``max_len`` characters, or ``int`` in
    ``[low, high]``; an optional argument that is absent (or null) is ``default``."""

    kind: type
    max_len: int = MAX_TEXT
    low: int = 0
    high: int = INT64_MAX
    optional: bool = False

    @property
    def default(self) -> Any:
        return self.kind()

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"an integer from {self.low} to {self.high}"
        return f"a string of at most {self.max_len} characters"


#: A path in the mount, as the CLI sends it (``/runs/old``).
PATH = Arg(str)
#: Free text recorded in the audit log.
TEXT = Arg(str)
OPTIONAL_TEXT = Arg(str, optional=True)
#: A request id (12 hex digits today; longer ones are simply not found).
REQUEST_ID = Arg(str, max_len=64)
#: Nanoseconds since the epoch, up to the end of year 9999 (the last time the audit
#: log's ISO 8601 stamps can show; the core refuses far less than that anyway).
TIME_NS = Arg(int, high=253_402_300_799 * 10**9)
#: A quota limit: 0 or more, or -1 (none) or -2 (keep).
LIMIT = Arg(int, low=-2)
#: Permission bits (which of them may be added is the desk's decision, and audited).
MODE = Arg(int, high=0o7777)
OPTIONAL_FLAG = Arg(bool, optional=True)


@dataclass(frozen=True)
class Op:
    admin: bool
    args: dict[str, Arg]


#: Every operation: whether only the admin socket serves it, and its arguments.
OPS: dict[str, Op] = {
    "hello": Op(admin=False, args={}),
    "delete_request": Op(admin=False, args={"path": PATH, "reason": TEXT}),
    "delete_list": Op(admin=False, args={}),
    "delete_approve": Op(admin=True, args={"id": REQUEST_ID, "reason": OPTIONAL_TEXT}),
    "delete_reject": Op(admin=True, args={"id": REQUEST_ID, "reason": TEXT}),
    "hold_set": Op(admin=True, args={"path": PATH, "reason": TEXT}),
    "hold_clear": Op(admin=True, args={"path": PATH}),
    "retain": Op(admin=True, args={"path": PATH, "until_ns": TIME_NS,
                                   "reason": OPTIONAL_TEXT}),
    # target: a path in the mount (a tree quota) or "uid:N"; a limit of -1 removes it,
    # -2 keeps it as it is
    "quota_set": Op(admin=True, args={"target": PATH, "bytes": LIMIT, "files": LIMIT}),
    "quota_show": Op(admin=True, args={}),
    # add read (directories: search) bits; never removes one, never adds a write bit
    "share": Op(admin=True, args={"path": PATH, "mode": MODE,
                                  "recursive": OPTIONAL_FLAG}),
}


class ProtocolError(WormError):
    """Malformed message."""

    errno = errno_mod.EINVAL
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Message:
    op: str
    args: dict[str, Any]

    @property
    def admin(self) -> bool:
        return OPS[self.op].admin


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError(f"malformed message: key {key[:64]!r} appears twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"malformed message: {name} is not JSON")


def parse(line: bytes) -> Message:
    """Validate one request line against :data:`OPS`; raises ProtocolError saying what
    is wrong."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError(f"message longer than {MAX_MESSAGE} bytes")
    try:
        data = json.loads(line, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ProtocolError("malformed message: nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("malformed message: not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed message: not an object")
    version = data.get("v")
    if type(version) is not int:
        raise ProtocolError(f'malformed message: v must be the integer {VERSION}, not '
                            f'{_json_type(version)}' if "v" in data else
                            f'malformed message: no protocol version (want "v": {VERSION})')
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {str(version)[:20]} (want {VERSION})")
    name = data.get("op")
    if type(name) is not str:
        raise ProtocolError("malformed message: no op")
    op = OPS.get(name)
    if op is None:
        raise ProtocolError(f"unknown op {name[:64]!r}")
    args: dict[str, Any] = {}
    for field, spec in op.args.items():
        value = data.get(field)
        if value is None:
            if not spec.optional:
                raise ProtocolError(f"{name}: argument {field!r} is missing or null")
            value = spec.default
        if type(value) is not spec.kind:
            raise ProtocolError(f"{name}: argument {field!r} must be {spec.describe()}, "
                                f"not {_json_type(value)}")
        if spec.kind is str and len(value) > spec.max_len:
            raise ProtocolError(f"{name}: argument {field!r} is too long (at most "
                                f"{spec.max_len} characters)")
        if spec.kind is int and not spec.low <= value <= spec.high:
            raise ProtocolError(f"{name}: argument {field!r} must be {spec.describe()}")
        args[field] = value
    return Message(op=name, args=args)


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number with a fraction or "
               "exponent", str: "a string", list: "an array", dict: "an object",
               type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def ok(result: Any) -> bytes:
    return encode({"v": VERSION, "ok": True, "result": result})


def error(exc: WormError) -> bytes:
    return encode({
        "v": VERSION, "ok": False, "error": exc.message,
        "errno": errno_mod.errorcode.get(exc.errno, str(exc.errno)), "exit": exc.exit_code,
    })
