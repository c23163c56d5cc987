"""The write-once semantics through a real mount, driven by syscalls and ordinary tools."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Mount, run_cli, wait_sealed

WRITE_FLAGS = {
    "O_WRONLY": os.O_WRONLY,
    "O_RDWR": os.O_RDWR,
    "O_APPEND": os.O_WRONLY | os.O_APPEND,
    "O_TRUNC": os.O_RDONLY | os.O_TRUNC,
    "O_CREAT|O_TRUNC": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}


def errno_of(fn, *args, **kwargs) -> int:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    raise AssertionError(f"{fn.__name__}{args} was not refused")


def sealed_file(root: Path, name: str = "sealed.bin", data: bytes = b"original\n") -> Path:
    path = root / name
    path.write_bytes(data)
    wait_sealed(path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ mutation matrix
@pytest.mark.parametrize("flag", list(WRITE_FLAGS))
def test_write_opens_of_a_sealed_file_are_refused(mnt: Mount, flag: str) -> None:
    f = sealed_file(mnt.path)
    assert errno_of(os.open, f, WRITE_FLAGS[flag]) == errno.EPERM
    assert f.read_bytes() == b"original\n"


MUTATIONS = {
    "truncate": lambda f: os.truncate(f, 0),
    "truncate_grow": lambda f: os.truncate(f, 100),
    "chmod_add_write": lambda f: os.chmod(f, 0o666),
    "chown": lambda f: os.chown(f, 1234, 1234),
    "utime": lambda f: os.utime(f, (0, 0)),
    "setxattr": lambda f: os.setxattr(f, "user.x", b"1"),
    "removexattr": lambda f: os.removexattr(f, "user.worm.sha256"),
    "unlink": lambda f: os.unlink(f),
    "rename_away": lambda f: os.rename(f, f.parent / "elsewhere"),
    "rename_over": lambda f: os.rename(sealed_file(f.parent, "other", b"x"), f),
    "link": lambda f: os.link(f, f.parent / "hardlink"),
    "mknod": lambda f: os.mknod(f.parent / "fifo", 0o600 | 0o010000),
}
EXPECTED_ERRNO = {"rename_over": errno.EEXIST}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutations_of_a_settled_sealed_file_are_refused_even_for_root(
    settled_mnt: Mount, name: str
) -> None:
    assert os.geteuid() == 0
    f = sealed_file(settled_mnt.path)
    before = os.stat(f)
    assert errno_of(MUTATIONS[name], f) == EXPECTED_ERRNO.get(name, errno.EPERM)
    assert f.read_bytes() == b"original\n"
    after = os.stat(f)
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, after.st_size) == (
        before.st_mode, before.st_uid, before.st_mtime_ns, before.st_size)
    wait_sealed(f)


def test_rmdir_is_refused_and_directories_work(settled_mnt: Mount) -> None:
    d = settled_mnt.path / "dir"
    d.mkdir()
    (d / "sub").mkdir()
    (d / "sub" / "f").write_text("x")
    assert errno_of(os.rmdir, d / "sub") == errno.ENOTEMPTY
    (d / "empty").mkdir()
    assert errno_of(os.rmdir, d / "empty") == errno.EPERM
    assert errno_of(shutil.rmtree, d) == errno.EPERM
    assert sorted(os.listdir(d)) == ["empty", "sub"]
    assert (d / "sub" / "f").read_text() == "x"


def test_symlinks_work_and_are_immutable(settled_mnt: Mount) -> None:
    target = sealed_file(settled_mnt.path)
    link = settled_mnt.path / "link"
    os.symlink("sealed.bin", link)
    assert os.readlink(link) == "sealed.bin"
    assert link.read_bytes() == target.read_bytes()
    assert errno_of(os.unlink, link) == errno.EPERM


def test_sealed_mode_loses_write_bits_and_carries_xattrs(mnt: Mount) -> None:
    f = sealed_file(mnt.path, data=b"abc")
    assert os.stat(f).st_mode & 0o222 == 0
    assert os.getxattr(f, "user.worm.sha256").decode() == hashlib.sha256(b"abc").hexdigest()
    assert os.getxattr(f, "user.worm.state") == b"sealed"
    assert os.stat(f).st_blksize == 1 << 20


# ------------------------------------------------------------------------ the writer
def test_second_writer_is_refused_while_the_first_is_open(mnt: Mount) -> None:
    f = mnt.path / "ckpt"
    with open(f, "wb") as w:
        w.write(b"first")
        w.flush()
        assert errno_of(os.open, f, os.O_WRONLY) == errno.EPERM
        assert errno_of(os.open, f, os.O_RDWR) == errno.EPERM
        assert os.getxattr(f, "user.worm.state") == b"writing"
        with open(f, "rb") as r:  # readers may look meanwhile
            assert r.read() == b"first"
    assert f.read_bytes() == b"first"
    wait_sealed(f)


def test_seal_happens_at_release_not_first_flush(mnt: Mount) -> None:
    subprocess.run(["sh", "-c", "exec 3>f; echo a >&3; echo b >&3"], cwd=mnt.path, check=True)
    assert (mnt.path / "f").read_text() == "a\nb\n"
    wait_sealed(mnt.path / "f")


def test_zipfile_seeking_back_round_trips(mnt: Mount) -> None:
    members = {f"m{i}.bin": os.urandom(300_000 + i) for i in range(5)}
    target = mnt.path / "model.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            with z.open(name, "w") as m:  # streams, then seeks back to patch the header
                m.write(data)
    with zipfile.ZipFile(target) as z:
        assert z.testzip() is None
        assert {n: z.read(n) for n in z.namelist()} == members
    wait_sealed(target)
    assert os.getxattr(target, "user.worm.sha256").decode() == sha(target)


def test_random_offset_writes_with_holes(mnt: Mount) -> None:
    rng = random.Random(7)
    size = 5 * (1 << 20) + 12345
    model = bytearray(size)
    f = mnt.path / "sparse"
    fd = os.open(f, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        for _ in range(60):
            off = rng.randrange(0, size - 70_000)
            data = rng.randbytes(rng.randrange(1, 70_000))
            os.pwrite(fd, data, off)
            model[off:off + len(data)] = data
        os.ftruncate(fd, size)
        os.pwrite(fd, b"tail", size - 4)
        model[size - 4:] = b"tail"
        os.pwrite(fd, b"X", 3 * (1 << 20) + 5)  # rewrite inside an already stored chunk
        model[3 * (1 << 20) + 5] = ord("X")
    finally:
        os.close(fd)
    assert f.read_bytes() == bytes(model)
    wait_sealed(f)
    assert os.getxattr(f, "user.worm.sha256").decode() == hashlib.sha256(model).hexdigest()


def test_ftruncate_shrinks_and_grows_through_the_writer(mnt: Mount) -> None:
    f = mnt.path / "t"
    with open(f, "wb") as w:
        w.write(b"a" * 3_000_000)
        w.flush()
        os.ftruncate(w.fileno(), 1_500_000)
        w.seek(0, os.SEEK_END)
        os.ftruncate(w.fileno(), 2_000_000)
    data = f.read_bytes()
    assert data == b"a" * 1_500_000 + bytes(500_000)


def test_large_file_streams_without_buffering_the_whole_file(mnt: Mount) -> None:
    f = mnt.path / "large"
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(f, "wb") as w:
        for i in range(96):
            piece = block[i:] + block[:i]
            w.write(piece)
            digest.update(piece)
    assert os.stat(f).st_size == 96 << 20
    wait_sealed(f)
    assert os.getxattr(f, "user.worm.sha256").decode() == digest.hexdigest()
    out = subprocess.run(["sha256sum", str(f)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == digest.hexdigest()


# ------------------------------------------------------------------------ settle window
def test_temp_file_renamed_into_place_like_safetensors(mnt: Mount) -> None:
    tmp = mnt.path / ".model.safetensors.tmp"
    tmp.write_bytes(b"weights")
    os.rename(tmp, mnt.path / "model.safetensors")
    assert (mnt.path / "model.safetensors").read_bytes() == b"weights"
    assert not tmp.exists()


def test_trainer_checkpoint_directory_rename(mnt: Mount) -> None:
    tmp = mnt.path / "out" / "tmp-checkpoint-100"
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        (tmp / name).write_bytes(name.encode() * 1000)
    os.rename(tmp, mnt.path / "out" / "checkpoint-100")
    assert sorted(os.listdir(mnt.path / "out")) == ["checkpoint-100"]
    assert (mnt.path / "out" / "checkpoint-100" / "optimizer.pt").read_bytes() == (
        b"optimizer.pt" * 1000)


def test_rename_over_an_existing_name_is_refused_even_while_unsettled(mnt: Mount) -> None:
    a = sealed_file(mnt.path, "a", b"A")
    b = sealed_file(mnt.path, "b", b"B")
    assert errno_of(os.rename, a, b) == errno.EEXIST
    assert errno_of(os.replace, a, b) == errno.EEXIST
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")


def test_creator_may_set_times_and_non_write_mode_while_unsettled(mnt: Mount) -> None:
    f = sealed_file(mnt.path)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    os.chmod(f, 0o640)
    st = os.stat(f)
    assert st.st_mtime_ns == 2_000_000_000
    assert st.st_mode & 0o777 == 0o440  # read bits applied, write bits never return


def test_settle_zero_refuses_the_same_renames(settled_mnt: Mount) -> None:
    tmp = settled_mnt.path / "model.tmp"
    tmp.write_bytes(b"weights")
    assert errno_of(os.rename, tmp, settled_mnt.path / "model") == errno.EPERM
    d = settled_mnt.path / "tmp-checkpoint-1"
    d.mkdir()
    assert errno_of(os.rename, d, settled_mnt.path / "checkpoint-1") == errno.EPERM
    assert errno_of(os.utime, tmp, (0, 0)) == errno.EPERM


def _make_tree(src: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(200_000),
        "sub/deeper/c.json": b'{"k": 1}',
    }
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return files


def _assert_tree(dst: Path, files: dict[str, bytes], *, mtimes: bool = True) -> None:
    for rel, data in files.items():
        p = dst / rel
        assert p.read_bytes() == data, rel
        wait_sealed(p)
        if mtimes:
            assert p.stat().st_mtime_ns == 1_600_000_000_000_000_000, rel


def test_tar_extract_preserves_mtimes(mnt: Mount, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as t:
        t.add(tmp_path / "src", arcname="tree")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(mnt.path)], check=True)
    _assert_tree(mnt.path / "tree", files)


def test_cp_a(mnt: Mount, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    subprocess.run(["cp", "-a", str(tmp_path / "src"), str(mnt.path / "copy")], check=True)
    _assert_tree(mnt.path / "copy", files)


def test_rsync_a(mnt: Mount, tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (scripts/setup installs it)")
    files = _make_tree(tmp_path / "src")
    subprocess.run(["rsync", "-a", f"{tmp_path / 'src'}/", f"{mnt.path / 'synced'}/"],
                   check=True)
    _assert_tree(mnt.path / "synced", files)


# ------------------------------------------------------------------------ store
def test_dedup_of_an_identical_64_mib_file(mnt: Mount) -> None:
    data = os.urandom(64 << 20)
    (mnt.path / "one").write_bytes(data)
    first = json.loads(run_cli("stats", str(mnt.path), "--json", check=True).stdout)
    (mnt.path / "two").write_bytes(data)
    second = json.loads(run_cli("stats", str(mnt.path), "--json", check=True).stdout)
    assert second["logical_bytes"] - first["logical_bytes"] == 64 << 20
    assert second["stored_bytes"] - first["stored_bytes"] < 0.02 * (64 << 20)
    assert second["dedup_ratio"] > 1.9


def test_corrupted_chunk_reads_eio_and_verify_names_the_file(mount_factory) -> None:
    m = mount_factory()
    (m.path / "good").write_bytes(b"g" * 100_000)
    (m.path / "victim").write_bytes(os.urandom(3 << 20))
    m.stop()
    store = m.store(write=True)
    try:
        with store.read() as rt:
            ino = rt.get_dirent(1, b"victim")
            key = rt.get_manifest(ino, 1)
            data = bytearray(rt.get_chunk(key))
        data[1000] ^= 0xFF
        with store.write() as tx:
            tx.raw_put("chunks", key, bytes(data))
    finally:
        store.close()
    m.start()
    with open(m.path / "victim", "rb") as f:
        assert f.read(1 << 20)  # chunk 0 is fine
        with pytest.raises(OSError) as exc:
            f.read(1 << 20)
        assert exc.value.errno == errno.EIO
    assert (m.path / "good").read_bytes() == b"g" * 100_000
    result = run_cli("verify", str(m.path))
    assert result.returncode == 1, result.stdout
    assert "/victim" in result.stdout
    assert "/good" not in result.stdout


def test_everything_persists_across_remount(mount_factory) -> None:
    m = mount_factory()
    payload = os.urandom(3 << 20)
    (m.path / "d").mkdir()
    (m.path / "d" / "f").write_bytes(payload)
    os.symlink("d/f", m.path / "l")
    wait_sealed(m.path / "d" / "f")
    digest = os.getxattr(m.path / "d" / "f", "user.worm.sha256")
    assert m.stop() == 0
    m.start()
    assert (m.path / "d" / "f").read_bytes() == payload
    assert (m.path / "l").read_bytes() == payload
    assert os.getxattr(m.path / "d" / "f", "user.worm.sha256") == digest
    assert os.getxattr(m.path / "d" / "f", "user.worm.state") == b"sealed"
    assert errno_of(os.open, m.path / "d" / "f", os.O_WRONLY) == errno.EPERM
    assert run_cli("verify", str(m.path)).returncode == 0
