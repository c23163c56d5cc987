"""The stored encoding of audit records: compact, exact, and readable next to raw values."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Mount, run_cli, wait_sealed
from worm_fs.audit.checkpoint import VerifierKey, open_checkpoint
from worm_fs.audit.log import canonical
from worm_fs.audit.merkle import leaf_hash, verify_inclusion
from worm_fs.errors import Corruption
from worm_fs.store import Store, u64
from worm_fs.store.records import (
    FORMAT_PACKED_V1,
    PACKED_FIELDS_V1,
    ZDICT_V1,
    RecordFormatError,
    decode_record,
    encode_record,
)

OPEN = {
    "boot_id": "a25cbafd-b970-4648-b1c7-72a078f94ee3", "comm": "python", "flags": 32768,
    "gid": 0, "ino": 4, "mono_ns": 2254539419101, "op": "open",
    "path": "/models/run-42/model.safetensors", "pid": 19817, "result": "ok", "seq": 4827,
    "time_ns": 1796189260224708139, "uid": 0,
}
#: OPEN as format 1 stored it when the format was made. Decoding it must never change.
OPEN_PACKED_V1 = bytes.fromhex(
    "010f0212db0818ed589d9510be2b06020ced056ddda25cbafdb9704648b1c772a078f94ee323c97c13"
    "1dac3620e50d1323080f39f5c21c60686961688ec39b00")


# ------------------------------------------------------------------------ the codec
def test_format_1_is_fixed_forever() -> None:
    assert hashlib.sha256(ZDICT_V1).hexdigest() == (
        "36e66ac37fc0d83d705f93c94eaa7cfaebb2de6add4eb92380dfe3c1a5f5baa7")
    assert PACKED_FIELDS_V1 == (("seq", "uint"), ("time_ns", "uint"), ("mono_ns", "uint"),
                                ("boot_id", "uuid"), ("sha256", "hex32"), ("layout", "hex32"))
    assert decode_record(OPEN_PACKED_V1) == canonical(OPEN)


def test_a_typical_open_packs_to_a_quarter_and_decodes_to_the_same_bytes() -> None:
    data = canonical(OPEN)
    value = encode_record(data)
    assert value[0] == FORMAT_PACKED_V1
    assert len(value) < 80 < 240 < len(data)
    assert decode_record(value) == data


def test_raw_values_of_older_stores_decode_as_themselves() -> None:
    data = canonical(OPEN)
    assert decode_record(data) == data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=8)
packed_like = st.sampled_from([
    0, 1, 255, 256, 2**63, 2**64 - 1, 2**64, -1, True, 1.5, "", "x" * 64, "ab" * 32,
    "AB" * 32, "a25cbafd-b970-4648-b1c7-72a078f94ee3", "A25CBAFD-B970-4648-B1C7-72A078F94EE3",
    "{a25cbafd-b970-4648-b1c7-72a078f94ee3}", "a25cbafdb9704648b1c772a078f94ee3", "unknown",
])


@settings(max_examples=300, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       packed=st.dictionaries(st.sampled_from([name for name, _ in PACKED_FIELDS_V1]),
                              packed_like | json_values))
def test_every_record_comes_back_byte_for_byte(extra: dict, packed: dict) -> None:
    data = canonical({**extra, **packed})
    value = encode_record(data)
    assert decode_record(value) == data
    assert len(value) <= len(data)


def test_bytes_that_are_not_canonical_are_stored_as_given() -> None:
    spaced = json.dumps(OPEN).encode()  # valid JSON, not the canonical form
    assert encode_record(spaced) == spaced


@pytest.mark.parametrize("damage", ["tag", "mask", "truncate", "append", "flip"])
def test_a_damaged_value_is_refused_not_misread(damage: str) -> None:
    value = bytearray(encode_record(canonical(OPEN)))
    if damage == "tag":
        value[0] = 0x7F
    elif damage == "mask":
        value[1] |= 0x80
    elif damage == "truncate":
        del value[-3:]
    elif damage == "append":
        value += b"\x00"
    else:
        value[len(value) - 10] ^= 0xFF
    try:
        decoded = decode_record(bytes(value))
    except RecordFormatError:
        return
    assert decoded != canonical(OPEN)  # a flip that still decodes yields other bytes


# ------------------------------------------------------------------------ on a mount
@pytest.fixture(scope="module")
def used_store(tmp_path_factory) -> tuple[Path, str]:
    """A stopped store after one model was written and opened 20 times, and a
    checkpoint of it kept 'off the host'."""
    base = tmp_path_factory.mktemp("encoding")
    m = Mount(base / "state", base / "mnt", ["--settle", "0"]).start()
    try:
        (m.path / "models" / "run-42").mkdir(parents=True)
        model = m.path / "models" / "run-42" / "model.safetensors"
        model.write_bytes(os.urandom(100_000))
        wait_sealed(model)
        for _ in range(20):
            with open(model, "rb") as f:
                f.read(4096)
        note = run_cli("log", "checkpoint", str(m.path), check=True).stdout
    finally:
        m.stop()
    return base / "state", note


def stored_values(state: Path) -> list[tuple[dict, bytes]]:
    store = Store(state, readonly=True)
    try:
        with store.read() as rt:
            return [(json.loads(rt.get_record(seq)), value)
                    for seq, value in rt.iter_stored_records()]
    finally:
        store.close()


def rewrite_raw(state: Path, below: int | None = None) -> None:
    """Store records (all, or those with seq < ``below``) as raw canonical JSON, the
    only encoding of older versions, through the store's raw API."""
    store = Store(state)
    try:
        with store.write() as tx:
            for seq, data in list(tx.iter_records()):
                if below is None or seq < below:
                    tx.raw_put("audit", u64(seq), data)
    finally:
        store.close()


def test_a_typical_open_and_release_are_stored_in_under_120_bytes(used_store) -> None:
    state, _ = used_store
    by_op: dict[str, list[int]] = {}
    for record, value in stored_values(state):
        by_op.setdefault(record["op"], []).append(len(value))
    assert len(by_op["open"]) == 20 and len(by_op["release"]) == 20
    assert max(by_op["open"]) < 120, by_op["open"]
    assert max(by_op["release"]) < 120, by_op["release"]
    assert max(by_op["seal"]) < 160


def test_a_store_mixing_raw_and_packed_values_verifies_and_proves(used_store,
                                                                   tmp_path: Path) -> None:
    src, note = used_store
    state = tmp_path / "state"
    shutil.copytree(src, state)
    rewrite_raw(state, below=10)  # as if an older version had written the first ten
    cp_file = tmp_path / "offhost.checkpoint"
    cp_file.write_text(note)
    m = Mount(state, tmp_path / "mnt", ["--settle", "0"]).start()
    try:
        (m.path / "after-upgrade").write_bytes(b"new")
        wait_sealed(m.path / "after-upgrade")
    finally:
        m.stop()
    formats = [value[0] for _, value in stored_values(state)]
    assert formats[:10] == [ord("{")] * 10
    assert set(formats[10:]) == {FORMAT_PACKED_V1}

    result = run_cli("log", "verify", str(state), "--checkpoint", str(cp_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "log intact" in result.stdout

    key = VerifierKey.parse(run_cli("log", "pubkey", str(state), check=True).stdout.strip())
    for seq in (3, len(formats) - 1):  # one raw, one packed
        proof = json.loads(run_cli("log", "prove", str(state), str(seq), check=True).stdout)
        cp = open_checkpoint(proof["checkpoint"], key)
        leaf = leaf_hash(proof["record"].encode())
        assert leaf.hex() == proof["leaf_hash"]
        assert json.loads(proof["record"])["seq"] == seq
        assert verify_inclusion(leaf, seq, cp.size, [bytes.fromhex(h) for h in proof["proof"]],
                                cp.root)


def test_log_show_prints_the_same_for_packed_and_raw_values(used_store,
                                                             tmp_path: Path) -> None:
    src, _ = used_store
    state = tmp_path / "state"
    shutil.copytree(src, state)
    assert {value[0] for _, value in stored_values(state)} == {FORMAT_PACKED_V1}
    packed = [run_cli("log", "show", str(state), *flag, check=True).stdout
              for flag in ((), ("--json",))]
    rewrite_raw(state)
    assert {value[0] for _, value in stored_values(state)} == {ord("{")}
    raw = [run_cli("log", "show", str(state), *flag, check=True).stdout
           for flag in ((), ("--json",))]
    assert packed == raw
    assert packed[0].count(" open ") == 20


def test_an_undecodable_value_is_reported_by_the_verifier(used_store, tmp_path: Path) -> None:
    src, _ = used_store
    state = tmp_path / "state"
    shutil.copytree(src, state)
    store = Store(state)
    try:
        with store.write() as tx:
            value = bytearray(tx.get_stored_record(5))
            tx.raw_put("audit", u64(5), bytes(value[:-4]))
    finally:
        store.close()
    result = run_cli("log", "verify", str(state))
    assert result.returncode == 1
    assert "seq 5: record cannot be decoded" in result.stdout
    store = Store(state, readonly=True)
    try:
        with store.read() as rt, pytest.raises(Corruption):
            rt.get_record(5)
    finally:
        store.close()
