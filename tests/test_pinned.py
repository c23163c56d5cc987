"""``get_pinned`` against a versioned bucket fake: which version is read, and how many
newer ones failed (a replacement, a delete marker, nothing at all)."""

from __future__ import annotations

from worm_fs.replication.pinned import get_pinned


class VersionedFake:
    """Versions of one bucket, newest last in each list; a None version is a delete
    marker. Counts the listings, which cost a request each."""

    def __init__(self, objects: dict[str, list[bytes | None]]) -> None:
        self.objects = objects
        self.listings = 0

    def _ids(self, name: str) -> list[str]:  # newest first, delete markers left out
        versions = self.objects.get(name, [])
        return [f"v{n}" for n in reversed(range(len(versions))) if versions[n] is not None]

    def fetch(self, name: str) -> bytes | None:
        versions = self.objects.get(name, [])
        return versions[-1] if versions else None

    def get(self, name: str, version_id: str | None = None) -> bytes | None:
        if version_id is None:
            return self.fetch(name)
        return self.objects[name][int(version_id[1:])]

    def versions(self, name: str) -> list[str]:
        self.listings += 1
        return self._ids(name)


def good(data: bytes) -> bool:
    return data.startswith(b"good")


def test_a_newest_version_that_passes_costs_one_read() -> None:
    bucket = VersionedFake({"c": [b"good old", b"good new"]})
    pinned = get_pinned(bucket, "c", good)
    assert (pinned.data, pinned.version_id, pinned.failed) == (b"good new", None, 0)
    assert bucket.listings == 0


def test_a_replaced_object_is_read_from_the_newest_version_that_passes() -> None:
    bucket = VersionedFake({"c": [b"good 0", b"good 1", b"bad 2", b"bad 3"]})
    pinned = get_pinned(bucket, "c", good)
    assert (pinned.data, pinned.version_id, pinned.failed) == (b"good 1", "v1", 2)


def test_a_delete_marker_does_not_hide_the_versions_beneath_it() -> None:
    bucket = VersionedFake({"c": [b"good 0", None]})
    pinned = get_pinned(bucket, "c", good)
    assert (pinned.data, pinned.version_id, pinned.failed) == (b"good 0", "v0", 1)


def test_nothing_of_that_name_is_missing_not_failed() -> None:
    pinned = get_pinned(VersionedFake({}), "c", good)
    assert (pinned.data, pinned.failed) == (None, 0)


def test_when_no_version_passes_every_one_counts_as_failed() -> None:
    pinned = get_pinned(VersionedFake({"c": [b"bad 0", None, b"bad 2"]}), "c", good)
    assert (pinned.data, pinned.version_id, pinned.failed) == (None, None, 2)
