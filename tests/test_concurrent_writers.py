"""Several writers through a real mount at once: closes share group commits, every file
is sealed with exactly its bytes, and the batching shows in ``stats``/``--prometheus``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading

from tests.conftest import Mount, run_cli, wait_sealed

WRITERS = 8
FILES_EACH = 25


def body(writer: int, n: int) -> bytes:
    return hashlib.sha256(f"{writer}-{n}".encode()).digest() * 128  # 4 KiB


def stats(m: Mount) -> dict[str, int]:
    return json.loads(run_cli("stats", "--json", str(m.path), check=True).stdout)


def test_concurrent_closes_share_commits_and_every_file_is_intact(settled_mnt: Mount) -> None:
    m = settled_mnt
    for w in range(WRITERS):
        (m.path / f"w{w}").mkdir()
    before = stats(m)
    errors: list[BaseException] = []

    def write_files(w: int) -> None:
        try:
            for n in range(FILES_EACH):
                fd = os.open(m.path / f"w{w}" / f"f{n}", os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    os.write(fd, body(w, n))
                finally:
                    os.close(fd)  # durable when this returns
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write_files, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    files = WRITERS * FILES_EACH
    for w in range(WRITERS):
        for n in range(FILES_EACH):
            path = m.path / f"w{w}" / f"f{n}"
            wait_sealed(path)
            assert path.read_bytes() == body(w, n)
            assert os.getxattr(path, "user.worm.sha256").decode() == \
                hashlib.sha256(body(w, n)).hexdigest()
    after = stats(m)
    closes = after["commit_flushes"] - before["commit_flushes"]
    commits = after["commits"] - before["commits"]
    assert closes == files
    assert commits < files  # seals, creates and records rode the closes' commits too
    assert after["commits_shared"] > before["commits_shared"]
    text = run_cli("stats", str(m.path), check=True).stdout
    assert re.search(r"^commits: +\d+ \(\d+ file flushes", text, re.M)
    prom = run_cli("stats", str(m.path), "--prometheus", check=True).stdout
    assert 'worm_fs_commit_flushes_total{store="' in prom
    assert run_cli("verify", str(m.path)).returncode == 0
    assert run_cli("log", "verify", str(m.path)).returncode == 0


def test_a_deep_tree_costs_no_more_per_file_than_a_flat_one(settled_mnt: Mount) -> None:
    """A change rewrites the entry and its parent only, never every ancestor."""
    m = settled_mnt
    deep = m.path
    for depth in range(200):
        deep = deep / f"d{depth}"
        deep.mkdir()
    store = m.store()
    with store.read() as rt:
        before = {ino: raw for ino, raw in rt.iter_inodes()}
    store.close()
    (deep / "leaf").write_bytes(b"leaf")
    wait_sealed(deep / "leaf")
    store = m.store()
    with store.read() as rt:
        after = {ino: raw for ino, raw in rt.iter_inodes()}
    store.close()
    rewritten = [ino for ino, raw in before.items() if after.get(ino) != raw]
    assert len(rewritten) == 1  # the leaf's parent directory (its mtime); no ancestor
