"""How audit records are stored: a compact encoding that gives back the exact bytes.

An audit record is defined, and hashed, as its canonical JSON (``worm_fs.audit.log``).
The log keeps every record forever, so it stores a smaller encoding of those bytes.
Decoding always yields the canonical bytes exactly; everything above the store (the
Merkle tree, checkpoints, proofs, ``log show``, the verifier) works on them and never
sees the stored form.

A stored value is one of:

=========  ==================================================================
first byte  format
=========  ==================================================================
``{``       **raw**: the canonical JSON itself (every record written before this
            encoding existed, and any record the packed form does not reproduce)
``0x01``    **packed v1**: a bit mask, the fields of :data:`PACKED_FIELDS_V1` it
            names in binary, then the remaining fields as canonical JSON, raw
            DEFLATE (RFC 1951) with the preset dictionary :data:`ZDICT_V1`
=========  ==================================================================

Packed v1 in detail: byte 0 is ``0x01``; byte 1 a mask whose bit ``i`` says that field
``i`` of :data:`PACKED_FIELDS_V1` was taken out of the JSON; then each such field in
table order (an unsigned integer as one length byte, 1 to 8, and that many bytes
big-endian; a UUID string as its 16 bytes, a 64-digit
lowercase hex digest as its 32 bytes); the rest of the value is a complete raw DEFLATE
stream of the canonical JSON of the other fields, compressed with the preset
dictionary :data:`ZDICT_V1`. Decoding parses that JSON object, puts the binary fields
back and re-encodes canonically.

:func:`encode_record` decodes what it produced and compares it with its input before
it returns it: if the two differ in any byte (an encoder bug, a value the packed form
cannot carry), or the packed form is not smaller, the record is stored raw. So the
encoding can cost space, never a record.

Both the field table and the dictionary are part of the format and fixed forever once
a store holds records that use them (a test pins their digest): a better dictionary
needs a new format byte, and decoding keeps every old one.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

FORMAT_RAW = ord("{")
FORMAT_PACKED_V1 = 0x01

_UINT, _UUID, _HEX32 = "uint", "uuid", "hex32"

#: Fields packed in binary by format 1, in mask-bit order. Never change: append a new
#: format instead.
PACKED_FIELDS_V1: tuple[tuple[str, str], ...] = (
    ("seq", _UINT),
    ("time_ns", _UINT),
    ("mono_ns", _UINT),
    ("boot_id", _UUID),
    ("sha256", _HEX32),
    ("layout", _HEX32),
)

#: The preset DEFLATE dictionary of format 1: the keys and values typical records
#: repeat, the most frequent last (a closer match is a cheaper one). Never change.
ZDICT_V1 = b"".join([
    b'"new_path":"target":"request_id":"requester_uid":"applied_mode":"atime_ns":',
    b'"mtime_ns":"new_uid":"new_gid":"kind":"file","files":"bytes_freed":"until":',
    b'"detail":"reason":"the store is in failsafe mode (","name":"user.',
    b' refused on file (sealed)",',
    b'"op":"delete_request","op":"delete_approve","op":"delete","op":"hold_set",',
    b'"op":"recover_seal","op":"recover_quarantine","op":"setattr","op":"rename",',
    b'"op":"symlink","op":"mkdir","op":"read","offset":"fh":',
    b'"mountpoint":"audit_reads":"handle","open_writers":0,"settle":60.0,',
    b'"settle_limit":86400.0,"op":"mount","op":"unmount",',
    b'"result":"EPERM","result":"EEXIST","result":"ENOENT","result":"EAGAIN",',
    b'"op":"open_throttled","count":',
    b'"mode":493,"mode":420,"flags":33345,"flags":32833,"flags":0,',
    b"/models/run-/checkpoint-/tmp-checkpoint-/pytorch_model.bin/config.json",
    b"/tokenizer.json/optimizer.pt/data/shard-0000.safetensors/model-0000",
    b'1-of-0000",',
    b'"op":"flush","path":"/","pid":"result":"ok","size":',
    b'"uid":0,"writes":{"bytes":0,"calls":1,"ranges":[[0,',
    b'"op":"seal","path":"/","pid":"result":"ok","size":',
    b'{"comm":"python3","gid":1000,"ino":',
    b'{"comm":"python","flags":33345,"gid":0,"ino":',
    b'"op":"create","path":"/',
    b'{"comm":"python3","flags":32768,"gid":1000,"ino":',
    b'"op":"open","path":"/","pid":"result":"ok","uid":1000}',
    b'{"comm":"python","gid":0,"ino":',
    b'"op":"release","path":"/","pid":',
    b'"reads":{"bytes":0,"calls":0,"ranges":[]},"result":"ok","uid":0}',
    b'{"comm":"python","flags":32768,"gid":0,"ino":',
    b'"op":"open","path":"/","pid":"result":"ok","uid":0}',
])

_MAX_UINT = 1 << 64


class RecordFormatError(ValueError):
    """A stored audit record value is in no format this version can read."""


#: The same output as ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
#: ensure_ascii=True)``, the canonical JSON of ``worm_fs.audit.log.canonical``,
#: without building an encoder per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _canonical(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _packable(kind: str, value: Any) -> bytes | None:
    """The binary form of ``value`` if it decodes back to exactly ``value``."""
    if kind == _UINT:
        if type(value) is not int or not 0 <= value < _MAX_UINT:
            return None
        raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
        return bytes([len(raw)]) + raw
    if not isinstance(value, str):
        return None
    try:
        raw = bytes.fromhex(value.replace("-", "") if kind == _UUID else value)
    except ValueError:
        return None
    if kind == _UUID:
        return raw if len(raw) == 16 and _uuid_text(raw) == value else None
    return raw if len(raw) == 32 and raw.hex() == value else None


def _pack_v1(record: dict[str, Any]) -> bytes:
    rest = dict(record)
    head = bytearray([FORMAT_PACKED_V1, 0])
    for bit, (name, kind) in enumerate(PACKED_FIELDS_V1):
        packed = _packable(kind, rest.get(name))
        if packed is None:
            continue
        head[1] |= 1 << bit
        head += packed
        del rest[name]
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=ZDICT_V1)
    return bytes(head) + comp.compress(_canonical(rest)) + comp.flush()


def _unpack_v1(value: bytes) -> bytes:
    if len(value) < 2:
        raise RecordFormatError("packed record: too short")
    mask, pos = value[1], 2
    if mask >> len(PACKED_FIELDS_V1):
        raise RecordFormatError("packed record: unknown fields in the mask")
    fields: dict[str, Any] = {}
    for bit, (name, kind) in enumerate(PACKED_FIELDS_V1):
        if not mask & (1 << bit):
            continue
        if kind == _UINT:
            size = value[pos] if pos < len(value) else 0
            pos += 1
            if not 1 <= size <= 8:
                raise RecordFormatError("packed record: bad integer")
        else:
            size = 16 if kind == _UUID else 32
        raw = value[pos : pos + size]
        if len(raw) != size:
            raise RecordFormatError("packed record: truncated field")
        pos += size
        if kind == _UINT:
            fields[name] = int.from_bytes(raw, "big")
        else:
            fields[name] = _uuid_text(raw) if kind == _UUID else raw.hex()
    decomp = zlib.decompressobj(-15, zdict=ZDICT_V1)
    try:
        text = decomp.decompress(value[pos:]) + decomp.flush()
    except zlib.error as exc:
        raise RecordFormatError(f"packed record: {exc}") from None
    if not decomp.eof or decomp.unused_data:
        raise RecordFormatError("packed record: the compressed part is incomplete or "
                                "followed by other bytes")
    try:
        rest = json.loads(text)
    except ValueError:
        raise RecordFormatError("packed record: the compressed part is not JSON") from None
    if not isinstance(rest, dict) or set(rest) & set(fields):
        raise RecordFormatError("packed record: the compressed part is not a record")
    rest.update(fields)
    return _canonical(rest)


def decode_record(value: bytes) -> bytes:
    """The canonical bytes of a stored record value; :class:`RecordFormatError` if it is
    in no known format or damaged."""
    if not value:
        raise RecordFormatError("empty record value")
    tag = value[0]
    if tag == FORMAT_RAW:
        return bytes(value)
    if tag == FORMAT_PACKED_V1:
        return _unpack_v1(bytes(value))
    raise RecordFormatError(f"unknown record format 0x{tag:02x}")


def encode_record(data: bytes, record: dict[str, Any] | None = None) -> bytes:
    """The value to store for the canonical record bytes ``data`` (``record``: the same
    record parsed, if the caller has it). Packed if that round-trips exactly and is
    smaller, else ``data`` itself."""
    if data[:1] != b"{":
        raise ValueError("an audit record is a JSON object")
    try:
        value = _pack_v1(json.loads(data) if record is None else record)
        if len(value) < len(data) and decode_record(value) == data:
            return value
    except Exception:  # noqa: BLE001 - whatever went wrong, the raw bytes are safe
        pass
    return bytes(data)


def format_name(value: bytes) -> str:
    """``raw``, ``packed-v1`` or ``unknown`` (for statistics and tools)."""
    tag = value[0] if value else -1
    return {FORMAT_RAW: "raw", FORMAT_PACKED_V1: "packed-v1"}.get(tag, "unknown")
