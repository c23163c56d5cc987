"""Reading an object whose bytes the log pins, around newer versions that fail.

S3 cannot refuse a new version of a key, and a replica reads by name. Every object a
replica reads has something that pins its bytes (a chunk its key and, once its file was
verified, its SHA-256; a layout object the layout digest of its seal record), so a
replaced object is told apart from the original. With Object Lock the original version
stays in the bucket beneath the replacement: :func:`get_pinned` reads the newest version
(one GET when nothing was changed) and, if it fails the check, the older versions
newest first, and takes the first that passes. An object absent by name is looked for
the same way (a delete marker hides the versions beneath it). How many failed is
returned for the caller to report: a replaced object is served from its good version and
still reported.

May block (network); holds no lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class VersionedBucket(Protocol):
    def fetch(self, name: str) -> bytes | None: ...

    def get(self, name: str, version_id: str | None = None) -> bytes | None: ...

    def versions(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class Pinned:
    #: The bytes of the newest version that passed, None if none did.
    data: bytes | None
    #: The version they came from; None: the newest, read by name.
    version_id: str | None = None
    #: Versions newer than that one (or all, if none passed) that failed the check.
    failed: int = 0


def get_pinned(bucket: VersionedBucket, name: str, accept: Callable[[bytes], bool],
               *, newest: bytes | None = None) -> Pinned:
    """The newest version of ``name`` that ``accept`` takes. ``newest``: the bytes of the
    newest version if the caller read them already."""
    data = bucket.fetch(name) if newest is None else newest
    if data is not None and accept(data):
        return Pinned(data)
    # Absent by name may be a delete marker (anyone who may put may add one, lock or
    # not) over the versions beneath: they are tried like those under a replacement.
    versions = bucket.versions(name)
    if data is None and not versions:
        return Pinned(None)  # no object of that name at all (nothing to route around)
    failed = 0
    for version_id in versions:  # the newest again: it may have changed
        older = bucket.get(name, version_id)
        if older is not None and accept(older):
            return Pinned(older, version_id, max(failed, 1))
        failed += 1
    return Pinned(None, None, max(failed, 1))
