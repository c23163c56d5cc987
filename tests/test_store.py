"""The chunk store on a real LMDB environment (no mount)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worm_fs.errors import Corruption
from worm_fs.store import Store, load_chunk, put_chunk, release_chunk
from worm_fs.store.chunks import digest


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path)
    yield s
    s.close()


def test_identical_chunks_are_stored_once_and_counted(store: Store) -> None:
    with store.write() as tx:
        a = put_chunk(tx, b"x" * 1000)
        b = put_chunk(tx, b"x" * 1000)
        assert a == b
        assert tx.get_ref(a) == 2
        assert tx.get_counter("stored_bytes") == 1000
        assert tx.get_counter("chunks") == 1


def test_release_frees_at_zero_references(store: Store) -> None:
    with store.write() as tx:
        key = put_chunk(tx, b"data")
        put_chunk(tx, b"data")
        assert release_chunk(tx, key) == 0
        assert tx.get_chunk(key) == b"data"
        assert release_chunk(tx, key) == 4
        assert tx.get_chunk(key) is None
        assert tx.get_counter("stored_bytes") == 0


def test_a_digest_collision_is_confirmed_by_bytes_not_trusted(store: Store) -> None:
    forged = digest(b"victim")
    with store.write() as tx:
        victim = put_chunk(tx, b"victim")
        attacker = put_chunk(tx, b"attacker", chunk_digest=forged)  # same digest, other bytes
        assert attacker != victim
        assert attacker[:16] == victim[:16]
        assert tx.get_chunk(victim) == b"victim"
        assert tx.get_ref(victim) == 1
    with store.read() as rt:
        assert load_chunk(rt, victim) == b"victim"
        with pytest.raises(Corruption):  # its bytes do not hash to its key
            load_chunk(rt, attacker)


def test_a_flipped_byte_is_detected_on_load(store: Store) -> None:
    with store.write() as tx:
        key = put_chunk(tx, b"precious bytes")
        tx.raw_put("chunks", key, b"precious bytez")
    with store.read() as rt:
        with pytest.raises(Corruption):
            load_chunk(rt, key)


def test_an_aborted_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.write() as tx:
            put_chunk(tx, b"gone")
            raise RuntimeError("abort")
    with store.read() as rt:
        assert rt.get_counter("chunks") == 0
