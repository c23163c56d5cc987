"""The control protocol's validation, against the table of operations in deletion.md."""

from __future__ import annotations

import json

import pytest

from worm_fs.control import protocol
from worm_fs.control.protocol import ProtocolError

#: The documented operations: op -> (admin only?, {argument: (JSON type, required?)}).
DOCUMENTED = {
    "hello": (False, {}),
    "delete_request": (False, {"path": (str, True), "reason": (str, True)}),
    "delete_list": (False, {}),
    "delete_approve": (True, {"id": (str, True), "reason": (str, False)}),
    "delete_reject": (True, {"id": (str, True), "reason": (str, True)}),
    "hold_set": (True, {"path": (str, True), "reason": (str, True)}),
    "hold_clear": (True, {"path": (str, True)}),
    "retain": (True, {"path": (str, True), "until_ns": (int, True), "reason": (str, False)}),
    "quota_set": (True, {"target": (str, True), "bytes": (int, True), "files": (int, True)}),
    "quota_show": (True, {}),
    "share": (True, {"path": (str, True), "mode": (int, True), "recursive": (bool, False)}),
}
GOOD = {"path": "/runs/old", "reason": "superseded", "id": "5c1e0f3a9b2d",
        "until_ns": 1_900_000_000 * 10**9, "target": "uid:1001", "bytes": 1 << 30,
        "files": -2, "mode": 0o444, "recursive": True}
#: Quota limits take -1 (none) and -2 (keep) besides 0 and more.
LIMITS = {"bytes", "files"}
#: Values of the wrong type (or out of range) for an argument of each type.
BAD = {
    str: [5, 0, True, False, 1.5, [], {}, ["/runs"], {"path": "/runs"}],
    int: [True, False, 1.5, 1e18, 2.0, "5", [], {}, -1, 253_402_300_800 * 10**9, 10**30],
    bool: [0, 1, "true", 1.5, [], {}],
}


def line(**fields: object) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def valid(op: str) -> dict[str, object]:
    return {name: GOOD[name] for name in DOCUMENTED[op][1]}


def test_the_table_holds_exactly_the_documented_operations() -> None:
    assert set(protocol.OPS) == set(DOCUMENTED)
    for op, (admin, args) in DOCUMENTED.items():
        message = protocol.parse(line(op=op, **valid(op)))
        assert message.op == op and message.admin is admin and message.args == valid(op)
        required = {k: v for k, v in valid(op).items() if args[k][1]}
        assert protocol.parse(line(op=op, **required)).args == valid(op) | {
            name: kind() for name, (kind, needed) in args.items() if not needed}


CASES = [(op, name, -3 if name in LIMITS and bad == -1 else bad)
         for op, (_, args) in DOCUMENTED.items()
         for name, (kind, _) in args.items() for bad in BAD[kind]]


@pytest.mark.parametrize(("op", "name", "bad"), CASES,
                         ids=[f"{op}-{name}-{bad!r}"[:60] for op, name, bad in CASES])
def test_every_argument_of_every_op_refuses_other_types_and_ranges(
        op: str, name: str, bad: object) -> None:
    with pytest.raises(ProtocolError) as exc:
        protocol.parse(line(op=op, **(valid(op) | {name: bad})))
    assert repr(name) in exc.value.message and "\n" not in exc.value.message


@pytest.mark.parametrize(("op", "name"), [(op, name) for op, (_, args) in DOCUMENTED.items()
                                          for name, (_, required) in args.items() if required])
def test_a_required_argument_missing_or_null_is_refused(op: str, name: str) -> None:
    for args in ({k: v for k, v in valid(op).items() if k != name}, valid(op) | {name: None}):
        with pytest.raises(ProtocolError, match=f"'{name}' is missing"):
            protocol.parse(line(op=op, **args))


def test_times_up_to_the_end_of_year_9999_are_accepted() -> None:
    for until_ns in (0, 2**63, 253_402_300_799 * 10**9):
        assert protocol.parse(line(op="retain", path="/a", until_ns=until_ns)).args[
            "until_ns"] == until_ns


def test_retain_keeps_its_reason() -> None:
    message = protocol.parse(line(op="retain", **valid("retain") | {"reason": "contract 17"}))
    assert message.args["reason"] == "contract 17"


@pytest.mark.parametrize("raw", [
    b"[" * 30_000,
    b'{"v":1,"op":"delete_request","path":"/runs","reason":' + b"[" * 30_000 + b"]" * 30_000
    + b"}",
    b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
], ids=["arrays", "inside-an-argument", "objects"])
def test_deep_nesting_is_a_protocol_error_not_a_crash(raw: bytes) -> None:
    assert len(raw) <= protocol.MAX_MESSAGE * 2
    with pytest.raises(ProtocolError, match="nested too deeply|longer than"):
        protocol.parse(raw)


@pytest.mark.parametrize(("raw", "why"), [
    (b'{"v":true,"op":"hello"}', "v must be the integer 1, not a boolean"),
    (b'{"v":1.0,"op":"hello"}', "v must be the integer 1, not a number"),
    (b'{"v":"1","op":"hello"}', "v must be the integer 1, not a string"),
    (b'{"op":"hello"}', "no protocol version"),
    (b'{"v":2,"op":"hello"}', "unsupported protocol version 2"),
    (b'{"v":1,"op":true}', "no op"),
    (b'{"v":1,"op":"hello","op":"retain"}', "'op' appears twice"),
    (b'{"v":1,"op":"retain","path":"/a","until_ns":NaN}', "NaN is not JSON"),
    (b'{"v":1,"op":"retain","path":"/a","until_ns":Infinity}', "Infinity is not JSON"),
    (b'{"v":1,"op":"delete_approve","id":"' + b"a" * 65 + b'"}', "'id' is too long"),
    (b'{"v":1,"op":"hold_clear","path":"' + b"a" * 4097 + b'"}', "'path' is too long"),
    (b'{"v":1,"op":"hello","pad":"' + b"a" * protocol.MAX_MESSAGE + b'"}', "longer than"),
    (b"\xff\xfe", "not JSON"),
])
def test_malformed_messages_are_one_line_protocol_errors(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as exc:
        protocol.parse(raw)
    assert "\n" not in exc.value.message and exc.value.exit_code == 2


def test_unknown_fields_and_identity_claims_are_ignored() -> None:
    message = protocol.parse(line(op="hello", uid=0, extra=[[[1]]]))
    assert message.args == {}
