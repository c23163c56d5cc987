"""A few MiB of disk kept aside so a full disk can still be recovered from.

When the state directory's disk is full, even a deletion needs room: LMDB writes new
pages before it frees old ones. The daemon keeps ``space.reserve`` (preallocated) in
the state directory; an approved deletion that fails with ENOSPC releases it and tries
again, and the reserve is taken back once there is room.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_FILE = "space.reserve"
RESERVE_BYTES = 16 << 20


class SpaceReserve:
    def __init__(self, state_dir: Path, size: int = RESERVE_BYTES) -> None:
        self.path = Path(state_dir) / RESERVE_FILE
        self.size = size
        self._warned = False

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def take(self) -> bool:
        """(Re)create the reserve; False if there is no room for it now."""
        if self.held:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            if not self._warned:  # once per shortage, not every second
                log.warning("cannot keep a %d MiB space reserve: %s", self.size >> 20,
                            exc.strerror)
            self._warned = True
            return False
        if self._warned:
            log.info("space reserve restored")
        self._warned = False
        return True

    def release(self) -> bool:
        """Give the reserved space back to the filesystem; True if there was any."""
        if not self.path.exists():
            return False
        self.path.unlink()
        log.warning("disk full: released the space reserve to let a deletion through")
        return True
