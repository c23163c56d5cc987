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
from worm_fs.core.layout import SealPlan, check_layout, chunk_count, chunk_length, layout_digest
from worm_fs.core.model import Caller, Inode, Kind, State
from worm_fs.core.paths import iso_time
from worm_fs.core.policy import read_bits_for
from worm_fs.core.quota import COUNTED_META, Usage, add_durable, counted_usage
from worm_fs.core.storer import ChunkStorer
from worm_fs.errors import WormError
from worm_fs.store import (
    CHUNK_SIZE,
    WriteTxn,
    digest,
    load_file_chunk,
    put_chunk,
    release_chunk,
    uploads,
)

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()
#: Set in ``meta`` once every sealed file has a layout digest.
LAYOUTS_META = "layouts_recorded"


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
            plan = self._seal_plan(writer.ino, writer.caller, "seal", writer)
        except WormError as exc:
            self._seal_failed(writer, exc)
            raise
        with self._lock:
            # Written by the next commit; a crash before that seals it at recovery.
            self._pending_seals.append(plan)
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

    def _seal_plan(
        self, ino: int, caller: Caller, op: str, writer: WriteHandle | None = None
    ) -> SealPlan:
        """Hash a file's durable content (continuing the writer's running hash, which
        covers only full chunks) and find the chunks its canonical layout still needs
        (:mod:`worm_fs.core.layout`). Runs outside every lock, in one read transaction."""
        with self.store.read() as rt:
            inode = Inode.from_bytes(rt.get_inode(ino) or b"")
            with writer.sha_lock if writer is not None else threading.Lock():
                running = writer.sha.copy() if writer is not None and writer.sha is not None \
                    else None
                start = writer.sha_next if running is not None else 0
            sha = running if running is not None else hashlib.sha256()
            plan = SealPlan(ino, "", caller, op)
            for index in range(start, chunk_count(inode.size)):
                length = chunk_length(inode.size, index)
                data = load_file_chunk(rt, ino, index)
                if data is None or len(data) != length:
                    data = (data or b"")[:length]
                    data += _zeros(length - len(data))
                    plan.fixups.append((index, data, digest(data)))
                sha.update(data)
            plan.sha256 = sha.hexdigest()
            return plan

    # ------------------------------------------------------------------ the seal itself
    def _seal(self, plan: SealPlan) -> None:
        self.commit(lambda tx, batch: self._seal_in(tx, batch, plan))

    def _seal_in(self, tx: WriteTxn, batch: AuditBatch, plan: SealPlan) -> None:
        """Seal a file as planned: make its layout canonical, then record the seal (with
        the SHA-256 and the layout digest) and the file's provenance."""
        ino, digest, caller, op = plan.ino, plan.sha256, plan.caller, plan.op
        now = advance_clock(tx, self.clock())  # retention counts from trusted time
        inode = Inode.from_bytes(tx.get_inode(ino) or b"")
        inode.layout = self._canonical_layout(tx, inode, plan)
        path = self._path(tx, ino)
        # Never a write bit; the store's read policy and any share made while it was
        # being written are added (policy.read_bits_for).
        inode.mode = (inode.mode & ~0o222) | read_bits_for(
            Kind.FILE, self.seal_read_mode | int(inode.extra.get("shared", 0)))  # type: ignore[arg-type]
        if self.seal_gid is not None:
            inode.gid = self.seal_gid
        seq = batch.add(self.log.stamp(
            op, path=path, ino=ino, size=inode.size, sha256=digest, layout=inode.layout,
            mode=inode.mode, group=inode.gid, **self._who(caller),
        ))
        inode.state = State.SEALED
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
        add_durable(tx, self.quotas.keys_for(tx, inode.uid, inode.parent, self.inode_in),
                    inode.size, 1)
        # The layout object for the bucket (a no-op unless the store replicates).
        tx.queue_upload(uploads.file_name(ino, inode.layout), 0)

    @staticmethod
    def _canonical_layout(tx: WriteTxn, inode: Inode, plan: SealPlan) -> str:
        """Inside the seal's job: store the plan's fixed chunks, drop entries past the
        size, and return the layout digest. Nothing else changes a file's chunks
        between its plan and its seal (its writer is gone), so what remains is
        canonical; :func:`check_layout` makes sure."""
        ino = inode.ino
        for index, data, chunk_digest in plan.fixups:
            old = tx.get_manifest(ino, index)
            tx.put_manifest(ino, index, put_chunk(tx, data, chunk_digest))
            if old is not None:
                release_chunk(tx, old)
        count = chunk_count(inode.size)
        for index, key in list(tx.iter_manifest(ino)):
            if index >= count:
                tx.delete_manifest(ino, index)
                release_chunk(tx, key)
        keys = check_layout(inode.size, tx.iter_manifest(ino), "")
        return layout_digest(inode.size, keys)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> dict[str, list[str]]:
        """Seal or quarantine files left writing by a crash. Run before serving."""
        sealed: list[str] = []
        quarantined: list[str] = []
        daemon = Caller.daemon()
        self._count_usage()
        with self.store.read() as rt:
            pending = [(ino, Inode.from_bytes(rt.get_inode(ino) or b"")) for ino in
                       rt.iter_writing()]
        for ino, inode in pending:
            if inode.clean:
                self._seal(self._seal_plan(ino, daemon, "recover_seal"))
                sealed.append(str(ino))
            else:
                self._quarantine(ino, daemon)
                quarantined.append(str(ino))
        layouts = self._record_missing_layouts(daemon)
        with self.store.read() as rt:
            self.quotas.load(rt)
        return {"sealed": sealed, "quarantined": quarantined, "layouts": layouts}

    def _count_usage(self) -> None:
        """Once per store: the durable per-uid usage of a store that had none (sealed
        and quarantined files; files left writing are counted as recovery seals them)."""
        with self.store.read() as rt:
            if rt.get_meta(COUNTED_META) is not None:
                return
            totals: dict[int, Usage] = {}
            for _, raw in rt.iter_inodes():
                inode = Inode.from_bytes(raw)
                usage = counted_usage(inode)
                if usage is not None:
                    total = totals.setdefault(inode.uid, Usage())
                    total.bytes += usage.bytes
                    total.files += usage.files

        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            for uid, total in totals.items():
                add_durable(tx, [("uid", uid)], total.bytes, total.files)
            tx.put_meta(COUNTED_META, b"1")

        self.commit(job)

    def _record_missing_layouts(self, caller: Caller) -> list[str]:
        """Once per store: give files sealed before layouts were recorded a canonical
        layout and its digest (each recorded as ``layout_recorded``). A file whose
        content no longer matches its sealed SHA-256 is left alone, for ``verify``
        to report."""
        with self.store.read() as rt:
            if rt.get_meta(LAYOUTS_META) is not None:
                return []
            inodes = (Inode.from_bytes(raw) for _, raw in rt.iter_inodes())
            todo = [inode.ino for inode in inodes
                    if inode.kind is Kind.FILE and inode.state is State.SEALED
                    and not inode.layout]
        recorded: list[str] = []
        for ino in todo:
            plan = self._seal_plan(ino, caller, "layout_recorded")

            def job(tx: WriteTxn, batch: AuditBatch, plan: SealPlan = plan) -> None:
                inode = Inode.from_bytes(tx.get_inode(plan.ino) or b"")
                if inode.sha256 != plan.sha256:
                    log.error("inode %d no longer matches its sealed SHA-256; its layout is "
                              "not recorded (run worm-fs verify)", plan.ino)
                    return
                inode.layout = self._canonical_layout(tx, inode, plan)
                tx.put_inode(plan.ino, inode.to_bytes())
                batch.add(self.log.stamp(
                    "layout_recorded", path=self._path(tx, plan.ino), ino=plan.ino,
                    size=inode.size, sha256=inode.sha256, layout=inode.layout,
                    **self._who(caller)))
                recorded.append(str(plan.ino))

            self.commit(job)
        self.commit(lambda tx, batch: tx.put_meta(LAYOUTS_META, b"1"))
        return recorded

    def _quarantine(
        self, ino: int, caller: Caller,
        reason: str = "writes after the last flush were not acknowledged",
    ) -> None:
        now = self.clock()

        def job(tx: WriteTxn, batch: AuditBatch) -> None:
            inode = Inode.from_bytes(tx.get_inode(ino) or b"")
            for index, key in tx.iter_manifest(ino):  # chunks stored after the last flush
                inode.size = max(inode.size, index * CHUNK_SIZE + (tx.chunk_size(key) or 0))
            inode.state = State.QUARANTINED
            inode.mode &= ~0o222
            inode.ctime_ns = now
            tx.put_inode(ino, inode.to_bytes())
            tx.set_writing(ino, False)
            tx.add_counter("quarantined", 1)
            add_durable(tx, self.quotas.keys_for(tx, inode.uid, inode.parent, self.inode_in),
                        inode.size, 1)
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


_ZERO_CHUNK = bytes(CHUNK_SIZE)


def _zeros(n: int) -> bytes:
    """``n`` zero bytes; a whole hole chunk shares one object."""
    return _ZERO_CHUNK if n == CHUNK_SIZE else bytes(n)
