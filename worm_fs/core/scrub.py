"""Scrub: re-hash every chunk and every sealed file, check each sealed file's layout
against its digest, and check reference counts.

Runs in one read transaction, so it can run beside a live daemon (a long reader pins
old pages; a scrub of a large store is the one long reader we accept, and it is an
admin's deliberate act). It reports findings and changes nothing.

A replica's store holds no chunks: its chunks are files in its cache. Given
``cached`` (a chunk by key, or None when it is not cached), the scrub checks the cached
chunks each file refers to instead, and a file not wholly cached is counted
(``uncached``), not reported: its bytes are verified when they are fetched.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worm_fs.core.layout import check_layout
from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import path_of
from worm_fs.errors import Corruption
from worm_fs.store import CHUNK_SIZE, Store, check_chunk


@dataclass
class Finding:
    kind: str  # "chunk", "file", "layout", "refcount", "manifest"
    detail: str
    path: str = ""


@dataclass
class ScrubReport:
    chunks: int = 0
    chunk_bytes: int = 0
    files: int = 0
    #: Files of a replica whose chunks are not all in its cache (not checked here).
    uncached: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


Progress = Callable[[str, int, int], None]


def scrub(store: Store, progress: Progress | None = None,
          cached: Callable[[bytes], bytes | None] | None = None) -> ScrubReport:
    report = ScrubReport()
    bad_chunks: set[bytes] = set()
    seen_chunks: set[bytes] = set()
    with store.read() as rt:
        total_chunks = rt.get_counter("chunks")
        if cached is not None:
            _scrub_cached(rt, cached, report, progress)
            return report
        for key, data in rt.iter_chunks():
            seen_chunks.add(key)
            report.chunks += 1
            report.chunk_bytes += len(data)
            try:
                check_chunk(key, data)
            except Corruption as exc:
                bad_chunks.add(key)
                report.findings.append(Finding("chunk", str(exc)))
            if progress and report.chunks % 256 == 0:
                progress("chunks", report.chunks, total_chunks)

        references: Counter[bytes] = Counter()
        inodes = list(rt.iter_inodes())
        for n, (ino, raw) in enumerate(inodes, 1):
            inode = Inode.from_bytes(raw)
            if inode.kind is not Kind.FILE:
                continue
            manifest = dict(rt.iter_manifest(ino))
            references.update(manifest.values())
            if inode.state is not State.SEALED:
                continue
            report.files += 1
            path = path_of(rt, ino)
            try:
                check_layout(inode.size, sorted(manifest.items()), inode.layout)
            except Corruption as exc:
                report.findings.append(Finding("layout", str(exc), path))
            sha = hashlib.sha256()
            broken = ""
            for index in range(-(-inode.size // CHUNK_SIZE)):
                length = min(CHUNK_SIZE, inode.size - index * CHUNK_SIZE)
                key = manifest.get(index)
                data = b""
                if key is not None:
                    if key in bad_chunks:
                        broken = f"chunk {index} ({key.hex()}) is corrupt"
                        break
                    data = rt.get_chunk(key) or b""
                    if not data:
                        broken = f"chunk {index} ({key.hex()}) is missing"
                        break
                    if len(data) != length and inode.layout:
                        report.findings.append(Finding("layout", (
                            f"chunk {index} holds {len(data)} bytes where the file's "
                            f"layout needs {length}"), path))
                sha.update(data[:length])
                if len(data) < length:
                    sha.update(bytes(length - len(data)))
            if not broken and sha.hexdigest() != inode.sha256:
                broken = f"SHA-256 {sha.hexdigest()} differs from the sealed {inode.sha256}"
            if broken:
                report.findings.append(Finding("file", broken, path))
            if progress and n % 256 == 0:
                progress("files", n, len(inodes))

        for key, count in references.items():
            stored = rt.get_ref(key)
            if stored != count:
                report.findings.append(Finding(
                    "refcount", f"chunk {key.hex()} has {stored} references, manifests hold {count}"
                ))
            if key not in seen_chunks and key not in bad_chunks:
                report.findings.append(Finding(
                    "manifest", f"a manifest points at chunk {key.hex()}, which is missing"))
        for key in seen_chunks - set(references):
            report.findings.append(Finding(
                "refcount", f"chunk {key.hex()} is stored but no file references it"))
    return report


def _scrub_cached(rt: Any, cached: Callable[[bytes], bytes | None], report: ScrubReport,
                  progress: Progress | None) -> None:
    """A replica: layouts and reference counts from the store, bytes from the cache."""
    inodes = list(rt.iter_inodes())
    references: Counter[bytes] = Counter()
    for n, (ino, raw) in enumerate(inodes, 1):
        inode = Inode.from_bytes(raw)
        if inode.kind is not Kind.FILE or inode.state is not State.SEALED:
            continue
        report.files += 1
        path = path_of(rt, ino)
        manifest = dict(rt.iter_manifest(ino))
        references.update(manifest.values())
        try:
            keys = check_layout(inode.size, sorted(manifest.items()), inode.layout)
        except Corruption as exc:
            report.findings.append(Finding("layout", str(exc), path))
            continue
        sha = hashlib.sha256()
        for key in keys:
            data = cached(key)
            if data is None:
                report.uncached += 1
                break
            report.chunks += 1
            report.chunk_bytes += len(data)
            try:
                check_chunk(key, data)
            except Corruption as exc:
                report.findings.append(Finding("chunk", f"cached {exc}", path))
                break
            sha.update(data)
        else:
            if sha.hexdigest() != inode.sha256:
                report.findings.append(Finding("file", f"SHA-256 {sha.hexdigest()} differs "
                                               f"from the sealed {inode.sha256}", path))
        if progress and n % 256 == 0:
            progress("files", n, len(inodes))
    for key, count in references.items():
        if rt.get_ref(key) != count:
            report.findings.append(Finding(
                "refcount", f"chunk {key.hex()} has {rt.get_ref(key)} references, "
                f"manifests hold {count}"))
