"""The upload queue's bookkeeping against a real store and committer (no bucket is
contacted): what a finished round drops from the queue, and what a new bucket resets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from worm_fs.audit.log import AuditLog
from worm_fs.core.fs import WormCore
from worm_fs.replication.s3 import Bucket, BucketUrl
from worm_fs.replication.uploader import LOG_UPLOADED, Uploader, queue_existing
from worm_fs.store import Store, u64, uploads
from worm_fs.store.chunks import put_chunk, release_chunk
from worm_fs.store.uploads import BUCKET_META

CHUNK = b"the same bytes, written by two files" * 1000


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WormCore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unused")
    store = Store(tmp_path)
    store.replicating = True
    core = WormCore(store, AuditLog(boot_id="test"), settle_s=0)
    core.initialize()
    core.start()
    yield core
    core.close()
    core.store.close()


def queued(core: WormCore, name: bytes) -> bool:
    with core.store.read() as rt:
        return rt.upload_queued(name)


def uploader_of(core: WormCore) -> Uploader:
    # Nothing listens there and nothing is uploaded: only _finish is called.
    return Uploader(core, Bucket(BucketUrl.parse("s3://unused/p"),
                                 endpoint="http://127.0.0.1:9"))


def queued_at(core: WormCore, name: bytes) -> int:
    with core.store.read() as rt:
        return next(t for n, t, _ in rt.iter_uploads() if n == name)


def test_a_chunk_gone_at_upload_but_stored_again_stays_queued(core: WormCore) -> None:
    key = core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    name = uploads.chunk_name(key)
    taken = {name: queued_at(core, name)}  # the uploader takes it...
    core.commit(lambda tx, batch: release_chunk(tx, key))
    assert not queued(core, name)  # ...freed: nothing to upload any more
    # The worker found it gone; before the round ends, another file stores the same
    # bytes, which queues it again.
    core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    uploader_of(core)._finish(taken, 0, 0, None, [])
    assert queued(core, name), "the bucket would never get this chunk"
    # Gone and not stored again: dropped.
    taken = {name: queued_at(core, name)}
    core.commit(lambda tx, batch: release_chunk(tx, key))
    uploader_of(core)._finish(taken, 0, 0, None, [])
    assert not queued(core, name)
    # Uploaded and untouched meanwhile: dropped as taken.
    core.commit(lambda tx, batch: put_chunk(tx, CHUNK))
    uploader_of(core)._finish({name: queued_at(core, name)}, 1, len(CHUNK), None, [])
    assert not queued(core, name)


def test_a_new_bucket_gets_the_whole_log_again(core: WormCore) -> None:
    core.commit(lambda tx, batch: (tx.put_meta(BUCKET_META, b"s3://old/p/"),
                                   tx.put_meta(LOG_UPLOADED, u64(500))))
    assert queue_existing(core, "s3://old/p/") == 0  # the same bucket: nothing to redo
    with core.store.read() as rt:
        assert rt.get_counter(LOG_UPLOADED) == 500
    queue_existing(core, "s3://new/p/")
    with core.store.read() as rt:
        assert rt.get_counter(LOG_UPLOADED) == 0  # tiles from the first record on
        assert rt.get_meta(BUCKET_META) == b"s3://new/p/"
