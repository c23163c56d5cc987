"""A replica's chunk cache: chunk files on local disk, bounded, least recently used out.

Layout under ``STATE_DIR/cache/``:

* ``c/<key hex>``: one chunk's bytes, written to a temporary name and renamed into
  place (a crash leaves a whole chunk or none; no fsync: a lost chunk is fetched again);
* ``v/<ino>-<layout digest>``: the SHA-256 of each chunk of a file whose bytes were
  checked against its sealed SHA-256 (32 bytes per chunk, in order). A chunk fetched
  again later is checked against this; a restarted replica serves a verified file from
  the cache alone.

The bytes of cached chunks never exceed ``limit``: an insert first evicts the least
recently used chunks (the order is kept in memory, rebuilt from the files' modification
times at start). Every load from disk re-hashes the chunk against its key (XXH3, as
the store does), so a damaged cache file is dropped, never served. The chunks used
last, up to ``memory`` bytes, are also kept in memory as checked: concurrent readers
and the kernel's parallel read-ahead of the same file do not re-read and re-hash them.

Concurrency: one lock guards the index (the order and the byte count); file I/O runs
outside it. Safe to call from any thread.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from worm_fs.replication.layout_objects import SHA_LEN
from worm_fs.store.chunks import DIGEST_LEN, digest

#: Bytes of recently used chunks kept in memory.
MEMORY = 32 * 1024 * 1024


class ChunkCache:
    def __init__(self, root: Path, limit: int, memory: int = MEMORY) -> None:
        self.root = root
        self.limit = limit
        self.memory = min(memory, limit)
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # key hex -> bytes
        self._recent_bytes = 0
        self._chunks = root / "c"
        self._verified = root / "v"
        for d in (self._chunks, self._verified):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._order: OrderedDict[str, int] = OrderedDict()  # key hex -> size, oldest first
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self._load_index()

    def _load_index(self) -> None:
        found = []
        for entry in os.scandir(self._chunks):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # an insert a crash interrupted
                continue
            st = entry.stat()
            found.append((st.st_mtime_ns, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._order[name] = size
            self.bytes += size
        self._evict_to(self.limit)  # the bound may have been lowered since

    # ------------------------------------------------------------------ chunks
    def get(self, key: bytes) -> bytes | None:
        """The cached bytes of ``key`` (checked against it), or None."""
        name = key.hex()
        with self._lock:
            known = name in self._order
            if known:
                self._order.move_to_end(name)
                data = self._recent.get(name)
                if data is not None:
                    self._recent.move_to_end(name)
                    self.hits += 1
                    return data
        data = None
        if known:
            try:
                data = (self._chunks / name).read_bytes()
            except FileNotFoundError:
                data = None
            if data is not None and digest(data) != key[:DIGEST_LEN]:
                self.drop([key])  # damaged on disk: fetched again
                data = None
        with self._lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
                if name in self._order:
                    self._keep(name, data)
        return data

    def _keep(self, name: str, data: bytes) -> None:
        """Under the lock: hold ``data`` in memory, dropping the oldest held."""
        if name in self._recent or len(data) > self.memory:
            return
        self._recent[name] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > self.memory:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    def _unkeep(self, name: str) -> None:
        old = self._recent.pop(name, None)
        if old is not None:
            self._recent_bytes -= len(old)

    def put(self, key: bytes, data: bytes) -> bool:
        """Keep ``data`` under ``key`` if it fits the bound (evicting older chunks);
        False if it is larger than the whole cache."""
        if len(data) > self.limit:
            return False
        name = key.hex()
        with self._lock:
            if name in self._order:
                self._order.move_to_end(name)
                return True
            self._evict_to(self.limit - len(data))
            self._order[name] = len(data)
            self.bytes += len(data)
            self._keep(name, data)
        tmp = self._chunks / f"{name}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self._chunks / name)
        with self._lock:
            if name not in self._order:  # dropped or evicted before the file was there:
                _unlink(self._chunks / name)  # nothing counts it, so it must not stay
        return True

    def drop(self, keys: list[bytes]) -> int:
        """Remove ``keys`` from the cache (a deleted file's chunks). Returns bytes freed."""
        freed = 0
        with self._lock:
            for key in keys:
                size = self._order.pop(key.hex(), None)
                if size is not None:
                    self.bytes -= size
                    freed += size
                    self._unkeep(key.hex())
                    _unlink(self._chunks / key.hex())
        return freed

    def holds(self, key: bytes) -> bool:
        with self._lock:
            return key.hex() in self._order

    def _evict_to(self, target: int) -> None:
        """Under the lock: drop the least recently used chunks until at most ``target``
        bytes are cached."""
        while self.bytes > max(0, target) and self._order:
            name, size = self._order.popitem(last=False)
            self.bytes -= size
            self.evicted += 1
            self._unkeep(name)
            _unlink(self._chunks / name)

    # ------------------------------------------------------------------ verified files
    def verified(self, ino: int, layout: str) -> list[bytes] | None:
        """The per-chunk SHA-256s of a file checked before, or None."""
        try:
            raw = (self._verified / f"{ino}-{layout}").read_bytes()
        except FileNotFoundError:
            return None
        return [raw[i : i + SHA_LEN] for i in range(0, len(raw), SHA_LEN)]

    def set_verified(self, ino: int, layout: str, shas: list[bytes]) -> None:
        path = self._verified / f"{ino}-{layout}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(shas))
        os.replace(tmp, path)

    def forget_file(self, ino: int, layout: str) -> None:
        _unlink(self._verified / f"{ino}-{layout}")

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            looked = self.hits + self.misses
            return {"cache_bytes": self.bytes, "cache_limit": self.limit,
                    "cache_chunks": len(self._order), "cache_hits": self.hits,
                    "cache_misses": self.misses, "cache_evicted": self.evicted,
                    "cache_hit_rate": round(self.hits / looked, 4) if looked else 0.0}


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
