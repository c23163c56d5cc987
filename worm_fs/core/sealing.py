"""Sealing at release, quarantine, and recovery after a crash.

``release`` (the last close of the writer's handle) flushes what is left, finishes the
file's SHA-256 outside every lock (a file patched after being stored, like a zip, is
re-read whole) and queues the seal, which the next commit writes (at most a
group-commit interval later; a crash before that seals the file at recovery, since its
last flush covered it). A writer that cannot be flushed is quarantined, never sealed.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading

from worm_fs.audit.log import AuditBatch
from worm_fs.core.base import CoreState
from worm_fs.core.clock import advance_clock
from worm_fs.core.handles import WriteHandle
from worm_fs.core.model import Caller, Inode, State
from worm_fs.core.paths import iso_time
from worm_fs.core.storer import ChunkStorer
from worm_fs.errors import WormError
from worm_fs.store import CHUNK_SIZE, WriteTxn, load_file_chunk

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()


class SealOps(CoreState):
    """The sealing part of :class:`~worm_fs.core.fs.WormCore`."""

    _storer: ChunkStorer

    # ------------------------------------------------------------------ release
    def release(self, fh: int) -> None:
        """Last close of a handle: a writer's file is sealed, a reader's reads recorded."""
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        writer = self._writers.get(handle.ino)
        if writer is None or writer.fh != fh:
            with self.store.read() as rt:
                path = self._path(rt, handle.ino)
            self.log.note(self.log.stamp(
                "release", path=path, ino=handle.ino, reads=handle.reads.summary(),
                **self._who(handle.caller),
            ))
            return
        try:
            if not writer.durable_clean:
                self._flush_writer(writer)
            digest = self._file_sha256(writer.ino, writer)
        except WormError as exc:
            self._seal_failed(writer, exc)
            raise
        with self._lock:
            # Written by the next commit; a crash before that seals it at recovery.
            self._pending_seals.append((writer.ino, digest, writer.caller, "seal"))
            del self._writers[writer.ino]

    def release_if_quick(self, fh: int) -> bool:
        """Release ``fh`` now if that needs no commit and little reading; else False."""
        handle = self._handles.get(fh)
        if handle is None:
            return True
        writer = self._writers.get(handle.ino)
        if writer is not None and writer.fh == fh:
            last = -(-writer.size // CHUNK_SIZE)
            if not writer.durable_clean or writer.sha is None or last - writer.sha_next > 1:
                return False
        self.release(fh)
        return True

    def _seal_failed(self, writer: WriteHandle, exc: WormError) -> None:
        """Its last bytes may not be durable: never present it as complete."""
        log.warning("could not seal inode %d (%s); quarantining it", writer.ino, exc.message)
        with writer.guard:  # before it stops counting as written (deletion checks)
            self._storer.drain(writer)
        with self._lock:
            self._writers.pop(writer.ino, None)
        try:
            self._quarantine(writer.ino, writer.caller, reason=exc.message)
        except WormError as again:
            log.error("could not quarantine inode %d either (%s); recovery will at the "
                      "next start", writer.ino, again.message)

    def _file_sha256(self, ino: int, writer: WriteHandle | None = None) -> str:
        """SHA-256 of a file's durable content (continuing the writer's running hash)."""
        with self.store.read() as rt:
            inode = Inode.from_bytes(rt.get_inode(ino) or b"")
            with writer.sha_lock if writer is not None else threading.Lock():
                running = writer.sha.copy() if writer is not None and writer.sha is not None \
                    else None
                start = writer.sha_next if running is not None else 0
            sha = running if running is not None else hashlib.sha256()
            nchunks = -(-inode.size // CHUNK_SIZE)
            for index in range(start, nchunks):
                length = min(CHUNK_SIZE, inode.size - index * CHUNK_SIZE)
                data = load_file_chunk(rt, ino, index) or b""
                sha.update(data[:length])
                if len(data) < length:
                    sha.update(bytes(length - len(data)))
            return sha.hexdigest()

    # ------------------------------------------------------------------ the seal itself
    def _seal(self, ino: int, digest: str, caller: Caller, op: str) -> None:
        self.commit(lambda tx, batch: self._seal_in(tx, batch, ino, digest, caller, op))

    def _seal_in(
        self, tx: WriteTxn, batch: AuditBatch, ino: int, digest: str, caller: Caller, op: str
    ) -> None:
        """Seal ``ino`` with its SHA-256; records the seal and the file's provenance."""
        now = advance_clock(tx, self.clock())  # retention counts from trusted time
        inode = Inode.from_bytes(tx.get_inode(ino) or b"")
        path = self._path(tx, ino)
        seq = batch.add(self.log.stamp(
            op, path=path, ino=ino, size=inode.size, sha256=digest, **self._who(caller),
        ))
        inode.state = State.SEALED
        inode.mode &= ~0o222
        inode.sha256 = digest
        inode.sealed_ns = now
        if self.retention_ns:  # stamped, so a later, shorter mount option cannot shorten it
            inode.extra["retain_until_ns"] = max(
                int(inode.extra.get("retain_until_ns", 0)),  # type: ignore[arg-type]
                now + self.retention_ns,
            )
        inode.extra["provenance"] = {
            **dict(inode.extra.get("writer") or {}),  # type: ignore[arg-type]
            "host": HOSTNAME, "sealed_at": iso_time(now), "seal_seq": seq,
            "sha256": digest, "size": inode.size,
            **({"recovered": True} if op != "seal" else {}),
        }
        inode.clean = True
        inode.ctime_ns = inode.changed_ns = now
        tx.put_inode(ino, inode.to_bytes())
        tx.set_writing(ino, False)
        tx.add_counter("files", 1)
        tx.add_counter("logical_bytes", inode.size)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> dict[str, list[str]]:
        """Seal or quarantine files left writing by a crash. Run before serving."""
        sealed: list[str] = []
        quarantined: list[str] = []
        daemon = Caller.daemon()
        with self.store.read() as rt:
            pending = [(ino, Inode.from_bytes(rt.get_inode(ino) or b"")) for ino in
                       rt.iter_writing()]
        for ino, inode in pending:
            if inode.clean:
                self._seal(ino, self._file_sha256(ino), daemon, "recover_seal")
                sealed.append(str(ino))
            else:
                self._quarantine(ino, daemon)
                quarantined.append(str(ino))
        return {"sealed": sealed, "quarantined": quarantined}

    def _quarantine(
        self, ino: int, caller: Caller,
        reason: str = "writes after the last flush were not acknowledged",
    ) -> None:
        now = self.clock()

        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            inode = Inode.from_bytes(tx.get_inode(ino) or b"")
            for index, key in tx.iter_manifest(ino):  # chunks stored after the last flush
                inode.size = max(inode.size, index * CHUNK_SIZE + len(tx.get_chunk(key) or b""))
            inode.state = State.QUARANTINED
            inode.mode &= ~0o222
            inode.ctime_ns = now
            tx.put_inode(ino, inode.to_bytes())
            tx.set_writing(ino, False)
            tx.add_counter("quarantined", 1)
            batch.add(self.log.stamp(
                "recover_quarantine", path=self._path(tx, ino), ino=ino, size=inode.size,
                reason=reason, **self._who(caller),
            ))

        self.commit(job)

    def open_writers(self) -> int:
        return len(self._writers)

    def has_writer(self, ino: int) -> bool:
        """Whether ``ino`` has a live writable handle (a ``writing`` file without one
        was orphaned by a failed seal and is quarantined at the next start)."""
        return ino in self._writers
