"""A hypothesis state machine: the core against a plain model of what it promises.

Steps create files, write at random offsets (across chunk boundaries), flush, close,
read, attempt refused mutations, delete through the approval procedure, and remount
(with writers still open, which is a crash as far as they are concerned). After every
step the store must agree with the model.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from worm_fs.audit.log import AuditLog
from worm_fs.core.deletion import Deletions
from worm_fs.core.fs import ROOT_INO, WormCore
from worm_fs.core.model import AttrChange, Caller, State
from worm_fs.errors import NotFound, Refused
from worm_fs.store import CHUNK_SIZE, Store

ALICE = Caller(uid=1000, gid=1000, pid=10, comm="alice")
ADMIN = Caller(uid=0, gid=0, pid=1, comm="admin")
NAMES = st.sampled_from([f"f{i}" for i in range(5)])


@dataclass
class ModelFile:
    state: State
    data: bytearray = field(default_factory=bytearray)
    clean: bool = False  # no write since the last flush
    flushed: bool = False  # flushed at least once: certainly stored


def apply_write(buf: bytearray, off: int, data: bytes) -> None:
    if len(buf) < off:
        buf.extend(bytes(off - len(buf)))
    buf[off:off + len(data)] = data


class CoreMachine(RuleBasedStateMachine):
    writers = Bundle("writers")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="worm-fs-model-"))
        self.files: dict[str, ModelFile] = {}
        self.open_fh: dict[int, str] = {}
        self._open()

    def _open(self) -> None:
        self.core = WormCore(Store(self.dir), AuditLog(boot_id="model"), settle_s=0)
        self.core.initialize()
        self.desk = Deletions(self.core)

    def teardown(self) -> None:
        self.core.close()
        self.core.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ steps
    @initialize(target=writers)
    def first_file(self):
        return self.create("f0")

    @rule(target=writers, name=NAMES)
    def create(self, name: str):
        if name in self.files:
            with pytest.raises(Refused) as exc:
                self.core.create(ROOT_INO, name.encode(), 0o644, os.O_WRONLY, ALICE)
            assert exc.value.errno == errno.EEXIST
            return None
        fh, _ = self.core.create(ROOT_INO, name.encode(), 0o644, os.O_WRONLY, ALICE)
        self.files[name] = ModelFile(State.WRITING)
        self.open_fh[fh] = name
        return fh

    @rule(fh=writers, off=st.integers(0, 3 * CHUNK_SIZE), size=st.integers(0, 300_000),
          seed=st.integers(0, 255))
    def write(self, fh, off: int, size: int, seed: int) -> None:
        if fh not in self.open_fh:
            return
        data = bytes((seed + i) % 251 for i in range(min(size, 64))) * (size // 64 + 1)
        data = data[:size]
        self.core.write(fh, off, data)
        f = self.files[self.open_fh[fh]]
        apply_write(f.data, off, data)
        f.clean = False

    @rule(fh=writers, off=st.integers(0, 3 * CHUNK_SIZE), size=st.integers(0, 300_000),
          seed=st.integers(0, 255))
    def write_again(self, fh, off: int, size: int, seed: int) -> None:
        """Writes are what most often goes wrong: give them more of the steps."""
        self.write(fh, off, size, seed)

    @rule(fh=writers, size=st.integers(1, CHUNK_SIZE + 10))
    def append(self, fh, size: int) -> None:
        if fh in self.open_fh:
            self.write(fh, len(self.files[self.open_fh[fh]].data), size, size % 256)

    @rule(fh=writers, size=st.integers(0, 3 * CHUNK_SIZE))
    def ftruncate(self, fh, size: int) -> None:
        if fh not in self.open_fh:
            return
        ino = self.core.lookup(ROOT_INO, self.open_fh[fh].encode()).ino
        self.core.setattr(ino, AttrChange(size=size), fh, ALICE)
        f = self.files[self.open_fh[fh]]
        del f.data[size:]
        f.data.extend(bytes(size - len(f.data)))
        f.clean = False

    @rule(fh=writers)
    def flush(self, fh) -> None:
        if fh not in self.open_fh:
            return
        self.core.flush(fh)
        self.files[self.open_fh[fh]].clean = True
        self.files[self.open_fh[fh]].flushed = True

    @rule(fh=consumes(writers))
    def close(self, fh) -> None:
        if fh not in self.open_fh:
            return
        self.core.flush(fh)
        self.core.release(fh)
        self.core.commit_pending()  # what the daemon's group commit does within 50 ms
        name = self.open_fh.pop(fh)
        self.files[name].state = State.SEALED

    @rule(name=NAMES, off=st.integers(0, 3 * CHUNK_SIZE), size=st.integers(1, 2 * CHUNK_SIZE))
    def read(self, name: str, off: int, size: int) -> None:
        f = self.files.get(name)
        if f is None or f.state is State.QUARANTINED:
            return
        ino = self.core.lookup(ROOT_INO, name.encode()).ino
        fh, _ = self.core.open(ino, os.O_RDONLY, ALICE)
        try:
            assert self.core.read(fh, off, size) == bytes(f.data[off:off + size])
        finally:
            self.core.release(fh)

    @rule(name=NAMES)
    def refused_mutations(self, name: str) -> None:
        f = self.files.get(name)
        if f is None:
            return
        ino = self.core.lookup(ROOT_INO, name.encode()).ino
        for attempt in (
            lambda: self.core.open(ino, os.O_WRONLY, ALICE),
            lambda: self.core.open(ino, os.O_RDONLY | os.O_TRUNC, ALICE),
            lambda: self.core.unlink(ROOT_INO, name.encode(), ALICE),
            lambda: self.core.setattr(ino, AttrChange(size=0), None, ALICE),
        ):
            with pytest.raises(Refused):
                attempt()

    @rule(a=NAMES, b=NAMES)
    def rename_over_is_refused(self, a: str, b: str) -> None:
        if a == b or a not in self.files or b not in self.files:
            return
        with pytest.raises(Refused) as exc:
            self.core.rename(ROOT_INO, a.encode(), ROOT_INO, b.encode(), 0, ALICE)
        assert exc.value.errno == errno.EEXIST

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        f = self.files.get(name)
        if f is None or f.state is State.WRITING:
            return
        req = self.desk.request(f"/{name}", "test", ALICE)
        self.desk.approve(req.id, ADMIN, "ok")
        del self.files[name]

    @precondition(lambda self: True)
    @rule()
    def remount(self) -> None:
        """Close and reopen the store; open writers are lost as in a crash."""
        self.core.close()
        self.core.store.close()
        self._open()
        self.core.recover()
        for fh, name in list(self.open_fh.items()):
            f = self.files[name]
            del self.open_fh[fh]
            try:
                self.core.lookup(ROOT_INO, name.encode())
            except NotFound:
                # A create is durable with the file's first flush (or the next commit of
                # anything); a never-flushed file may be gone, a flushed one never is.
                assert not f.flushed, name
                del self.files[name]
                continue
            f.state = State.SEALED if f.clean else State.QUARANTINED

    # ------------------------------------------------------------------ invariants
    @invariant()
    def store_matches_model(self) -> None:
        names = {name.decode() for name, _ in self.core.readdir(ROOT_INO)}
        assert names == set(self.files)
        for name, f in self.files.items():
            inode = self.core.lookup(ROOT_INO, name.encode())
            assert inode.state is f.state, name
            if f.state is not State.QUARANTINED:
                assert inode.size == len(f.data), name
            if f.state is State.SEALED:
                assert inode.sha256 == hashlib.sha256(f.data).hexdigest(), name
        with pytest.raises(NotFound):
            self.core.lookup(ROOT_INO, b"never-created")


TestCoreAgainstModel = CoreMachine.TestCase
TestCoreAgainstModel.settings = settings(
    max_examples=int(os.environ.get("WORM_FS_MODEL_EXAMPLES", "40")),
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ThreadedCoreMachine(CoreMachine):
    """The same model with the committer and hasher threads running, as in the daemon:
    every change goes through the group commit, full chunks through the hasher."""

    def _open(self) -> None:
        super()._open()
        self.core.start()


TestThreadedCoreAgainstModel = ThreadedCoreMachine.TestCase
TestThreadedCoreAgainstModel.settings = settings(
    max_examples=int(os.environ.get("WORM_FS_MODEL_EXAMPLES", "25")),
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
