"""Real ML writers and tools round-tripping through a real mount."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Mount, wait_sealed

np = pytest.importorskip("numpy", reason="numpy is not installed (pip install -e .[test])")


def sealed_tree(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        wait_sealed(p)
    return files


def test_numpy_save_and_load(mnt: Mount) -> None:
    array = np.random.default_rng(0).standard_normal((256, 129)).astype(np.float32)
    np.save(mnt.path / "weights.npy", array)
    assert np.array_equal(np.load(mnt.path / "weights.npy"), array)
    np.savez_compressed(mnt.path / "bundle.npz", a=array, b=array[:3])  # a zip, seeks back
    with np.load(mnt.path / "bundle.npz") as z:
        assert np.array_equal(z["a"], array) and np.array_equal(z["b"], array[:3])


def test_torch_save_and_load_a_small_model(mnt: Mount) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                                "torch==2.13.0)")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    torch.save(model.state_dict(), mnt.path / "model.pt")
    wait_sealed(mnt.path / "model.pt")
    loaded = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 4))
    loaded.load_state_dict(torch.load(mnt.path / "model.pt", weights_only=True))
    x = torch.randn(5, 32)
    assert torch.equal(model(x), loaded(x))


def test_safetensors_save_file_and_load_file(mnt: Mount) -> None:
    st = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    tensors = {"embed": np.arange(4096, dtype=np.float32).reshape(64, 64),
               "bias": np.ones(7, dtype=np.float16)}
    st.save_file(tensors, mnt.path / "model.safetensors", metadata={"format": "np"})
    back = st.load_file(mnt.path / "model.safetensors")
    assert set(back) == set(tensors)
    assert all(np.array_equal(back[k], tensors[k]) for k in tensors)


def test_trainer_style_checkpoint_directory(mnt: Mount) -> None:
    """What the Hugging Face Trainer does: write tmp-checkpoint-N/, then rename it."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    out = mnt.path / "run"
    for step in (10, 20):
        tmp = out / f"tmp-checkpoint-{step}"
        tmp.mkdir(parents=True)
        model = torch.nn.Linear(16, 16)
        st.save_file(model.state_dict(), tmp / "model.safetensors")
        opt = torch.optim.AdamW(model.parameters())
        model(torch.randn(2, 16)).sum().backward()
        opt.step()
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        os.rename(tmp, out / f"checkpoint-{step}")
    assert sorted(os.listdir(out)) == ["checkpoint-10", "checkpoint-20"]
    state = st.load_file(out / "checkpoint-20" / "model.safetensors")
    assert state["weight"].shape == (16, 16)
    opt_state = torch.load(out / "checkpoint-20" / "optimizer.pt", weights_only=True)
    assert "state" in opt_state
    assert json.loads((out / "checkpoint-20" / "trainer_state.json").read_text()) == {
        "global_step": 20}
    for p in sealed_tree(out):
        wait_sealed(p)


def test_sha256sum_check_against_the_xattrs(mnt: Mount) -> None:
    (mnt.path / "d").mkdir()
    for i in range(5):
        (mnt.path / "d" / f"f{i}.bin").write_bytes(os.urandom(10_000 * (i + 1)))
    lines = [f"{os.getxattr(p, 'user.worm.sha256').decode()}  {p.relative_to(mnt.path)}"
             for p in sealed_tree(mnt.path / "d")]
    (Path(mnt.path.parent) / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    result = subprocess.run(["sha256sum", "-c", str(mnt.path.parent / "SHA256SUMS")],
                            cwd=mnt.path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == 5


def test_git_cannot_work_on_a_worm_store_by_nature(mnt: Mount) -> None:
    """git updates its config and index by writing NAME.lock and renaming it over NAME,
    which a write-once store refuses. docs/semantics.md says so; this keeps it honest."""
    result = subprocess.run(["git", "init", "-q", str(mnt.path / "repo")], capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert "config" in result.stderr
