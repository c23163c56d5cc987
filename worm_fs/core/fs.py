"""The filesystem core: one store's semantics. Knows nothing of FUSE or trio.

:class:`WormCore` is assembled from parts with one job each (this used to be one module;
what other packages imported from here still is):

* :mod:`.base` -- shared state, the lock table ("who protects what"), commit hooks,
  failsafe, refusals;
* :mod:`.namespace` -- lookups, create/mkdir/symlink, rename, setattr, refusals;
* :mod:`.files` -- open, write, flush (the data path, top to bottom);
* :mod:`.reads` -- reads: sealed files from the store (from the page cache without a
  thread hop), files being written through their writer;
* :mod:`.sealing` -- release and seal, quarantine, crash recovery;
* :mod:`.committer` -- the one thread that writes the store (group commit);
* :mod:`.storer` -- hashing full chunks off the request path;
* :mod:`.settle` -- the settle window; :mod:`.policy` -- the table of rules.

Life cycle: construct, :meth:`WormCore.initialize`, :meth:`~.sealing.SealOps.recover`
(inline: the calling thread writes), :meth:`WormCore.start` (from now on only the
committer thread writes), serve, :meth:`WormCore.close` (drains and stops the threads).
Without ``start`` everything runs inline on the caller's thread, deterministically:
that is how the unit tests drive the core.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from worm_fs.audit.log import AuditLog
from worm_fs.core.committer import (
    COMMIT_CHANGES_KEY,
    COMMIT_FLUSHES_KEY,
    COMMIT_RECORDS_KEY,
    COMMITS_KEY,
    SHARED_COMMITS_KEY,
)
from worm_fs.core.files import FileOps, wants_write
from worm_fs.core.model import Inode, Kind
from worm_fs.core.namespace import SUBDIRS_META, XATTR_STATE_DIR, NamespaceOps
from worm_fs.core.paths import NAME_MAX, ROOT_INO, iso_time, path_of
from worm_fs.core.quota import COUNTED_META, stored_quotas
from worm_fs.core.reads import ReadOps
from worm_fs.core.sealing import LAYOUTS_META, SealOps
from worm_fs.core.storer import ChunkStorer
from worm_fs.core.throttle import OpenThrottle
from worm_fs.errors import UsageError
from worm_fs.store import Store, u64

SCHEMA_VERSION = 1


class WormCore(NamespaceOps, FileOps, ReadOps, SealOps):
    """One store's filesystem semantics; see the module docstring for its parts."""

    def __init__(
        self, store: Store, log: AuditLog, *, open_rate_limit: float = 0.0, **options: Any
    ) -> None:
        super().__init__(store, log, **options)
        self._storer = ChunkStorer(self.committer)
        self._throttle = OpenThrottle(open_rate_limit, self.note_throttled)
        self.root_xattrs[XATTR_STATE_DIR] = str(store.path).encode()

    def start(self) -> None:
        """Start the committer and hasher threads (after recovery, before serving)."""
        self.committer.start()
        self._storer.start()

    def close(self) -> None:
        """Hand over what the storer holds, commit everything queued, stop the threads
        (after the last request)."""
        self._storer.close()
        self.committer.close()

    def initialize(self) -> bool:
        """Create the root and store identity on first use. Returns True if created."""
        with self.store.read() as rt:
            if rt.get_meta("schema_version") is not None:
                version = int(rt.get_meta("schema_version") or b"0")
                if version != SCHEMA_VERSION:
                    raise UsageError(f"store schema {version} is not supported")
                self.quotas.load(rt)
                return False
        now = self.clock()
        root = Inode(
            ino=ROOT_INO, kind=Kind.DIR, mode=0o755, uid=os.getuid(), gid=os.getgid(),
            parent=ROOT_INO, name=b"", atime_ns=now, mtime_ns=now, ctime_ns=now,
            changed_ns=now, born_ns=now,
        )

        def job(tx: Any, batch: Any) -> None:
            tx.put_meta("schema_version", str(SCHEMA_VERSION).encode())
            tx.put_meta(LAYOUTS_META, b"1")  # a new store has no file without a layout
            tx.put_meta(COUNTED_META, b"1")  # nor any usage to count
            tx.put_meta(SUBDIRS_META, b"1")  # nor a directory without its count
            tx.put_meta("store_id", secrets.token_hex(8).encode())
            tx.put_meta("next_ino", u64(ROOT_INO + 1))
            tx.put_inode(ROOT_INO, root.to_bytes())
            batch.add(self.log.stamp("init", path="/", ino=ROOT_INO))

        self.commit(job)
        return True

    def store_id(self) -> str:
        with self.store.read() as rt:
            return (rt.get_meta("store_id") or b"").decode()

    def stats(self) -> dict[str, Any]:
        return store_stats(self.store)


def store_stats(store: Store) -> dict[str, Any]:
    """Store-wide counters (kept in the same transactions as the changes they count)."""
    with store.read() as rt:
        logical = rt.get_counter("logical_bytes")
        stored = rt.get_counter("stored_bytes")
        commits = rt.get_counter(COMMITS_KEY)
        flushes = rt.get_counter(COMMIT_FLUSHES_KEY)
        return {
            "files": rt.get_counter("files"),
            "quarantined": rt.get_counter("quarantined"),
            "writing": len(rt.iter_writing()),
            "logical_bytes": logical,
            "stored_bytes": stored,
            "chunks": rt.get_counter("chunks"),
            "dedup_ratio": round(logical / stored, 4) if stored else 1.0,
            "audit_records": rt.get_counter("audit_next_seq"),
            "freed_bytes": rt.get_counter("freed_bytes"),
            "deleted_entries": rt.get_counter("deleted_entries"),
            "commits": commits,
            "commit_changes": rt.get_counter(COMMIT_CHANGES_KEY),
            "commit_flushes": flushes,
            "commit_records": rt.get_counter(COMMIT_RECORDS_KEY),
            "commits_shared": rt.get_counter(SHARED_COMMITS_KEY),
            "flushes_per_commit": round(flushes / commits, 3) if commits else 0.0,
            "quotas": stored_quotas(rt),
        }


__all__ = [
    "NAME_MAX",
    "ROOT_INO",
    "SCHEMA_VERSION",
    "WormCore",
    "iso_time",
    "path_of",
    "store_stats",
    "wants_write",
]
