"""Issue 12: `nnn embed`'s resumable store cannot resume into garbage.

A full disk (a tmpfs mounted here, as root) exits 2 with one line; after space is freed the rerun
resumes from the verified committed rows and gives exactly a clean run's arrays.  A damaged partial
folder is discarded with a note.  The model is a tiny TorchScript text encoder (512 wide, so that a
few thousand rows fill a few MB).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from nnn_cli.embed.store import PartialStore, partial_path  # noqa: E402
from nnn_cli.errors import OutputError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DIM = 512


class _WideTextNet(torch.nn.Module):
    def forward(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 512)
        base = torch.arange(512, dtype=torch.float32)
        for i, t in enumerate(texts):
            n = float(len(t))
            w = float(len(t.split(" ")))
            out[i] = torch.cos(base * (n + 1.0) / 97.0) + w / 10.0
        return out


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    torch.jit.script(_WideTextNet()).save(str(root / "wide.pt"))
    return root / "wide.pt"


def _texts(path: Path, n: int) -> Path:
    path.write_text("".join(f"item {i} {'x' * (i % 53)} {'w ' * (i % 7)}\n" if i % 97 else "\n" for i in range(n)))
    return path


def _embed(inp, out, model, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nnn_cli",
            "embed",
            str(inp),
            "-o",
            str(out),
            "--model",
            str(model),
            "-B",
            "64",
            "--device",
            "cpu",
            *map(str, extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _arrays(path: Path):
    if path.suffix == ".npy":
        side = json.loads(Path(str(path) + ".json").read_text())
        return np.load(path), side["ids"], [s["id"] for s in side["skipped"]]
    with h5py.File(path, "r") as f:
        return (
            f["embeddings"][()],
            [str(x) for x in f["ids"].asstr()[()]],
            [str(x) for x in f["skipped_ids"].asstr()[()]],
        )


def _same(a: Path, b: Path) -> None:
    ea, ia, sa = _arrays(a)
    eb, ib, sb = _arrays(b)
    assert ea.dtype == eb.dtype and ea.shape == eb.shape and ea.tobytes() == eb.tobytes()
    assert ia == ib and sa == sb


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def _one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_full_disk_then_resume_equals_clean_run(tmp_path, wide_model, suffix):
    inp = _texts(tmp_path / "in.txt", 1500)  # ~3 MB of float32 rows at d=512
    clean = tmp_path / f"clean{suffix}"
    assert _embed(inp, clean, wide_model).returncode == 0
    with _tmpfs(tmp_path / "mnt", "2m") as mnt:
        out = mnt / f"o{suffix}"
        # 1. the partial folder runs out of space: one line, no output, committed rows kept
        proc = _embed(inp, out, wide_model)
        assert _one_error_line(proc) == f"Error: disk full writing {partial_path(out)}"
        assert not out.exists()
        manifest = json.loads((partial_path(out) / "manifest.json").read_text())
        assert 0 < manifest["rows"] < 1500
        # 2. more space, but not enough for the final file beside the partial: one line, rows kept
        _resize(mnt, "4m")
        proc = _embed(inp, out, wide_model, "--json")
        assert _one_error_line(proc) == f"Error: disk full writing {out}"
        assert not out.exists() and partial_path(out).is_dir()
        assert not [p for p in mnt.iterdir() if p.name.endswith(".tmp")]
        # 3. space freed: resumes from the verified rows and equals the clean run byte for byte
        _resize(mnt, "16m")
        proc = _embed(inp, out, wide_model, "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["resumed_records"] == 1500 and summary["encoded_now"] == 0
        _same(clean, out)
        assert not partial_path(out).exists()


def test_full_disk_on_first_batch_leaves_nothing(tmp_path, wide_model):
    inp = _texts(tmp_path / "in.txt", 300)
    with _tmpfs(tmp_path / "mnt", "100k") as mnt:
        out = mnt / "o.h5"
        proc = _embed(inp, out, wide_model)
        assert _one_error_line(proc) == f"Error: disk full writing {partial_path(out)}"
        assert not out.exists() and not partial_path(out).exists()


def test_damaged_partial_is_discarded_not_resumed(tmp_path, wide_model):
    inp = _texts(tmp_path / "in.txt", 400)
    clean, out = tmp_path / "clean.h5", tmp_path / "o.h5"
    assert _embed(inp, clean, wide_model).returncode == 0
    for damage in ("flip", "truncate", "manifest"):
        assert _embed(inp, out, wide_model, "--max-batches", "3").returncode == 0
        folder = partial_path(out)
        if damage == "flip":  # one committed byte changed: the checksum catches it
            with open(folder / "embeddings.bin", "r+b") as fh:
                fh.seek(1000)
                b = fh.read(1)
                fh.seek(1000)
                fh.write(bytes([b[0] ^ 1]))
        elif damage == "truncate":  # committed rows missing
            os.truncate(folder / "embeddings.bin", 4096)
        else:
            (folder / "manifest.json").write_text("{not json")
        proc = _embed(inp, out, wide_model, "--json")
        assert proc.returncode == 0, proc.stderr
        assert "the partial file did not verify" in proc.stderr, proc.stderr
        assert json.loads(proc.stdout)["resumed_records"] == 0
        _same(clean, out)
        out.unlink()


def test_uncommitted_tail_is_cut_on_resume(tmp_path):
    out = tmp_path / "o.h5"
    store = PartialStore.open(out, {"k": 1})
    store.append(np.eye(3, 4, dtype=np.float32), ["a", "b", "c"], [("d", "empty")], 4)
    store.close()
    folder = partial_path(out)
    with open(folder / "embeddings.bin", "ab") as fh:  # a batch written but never committed
        fh.write(b"\x01" * 32)
    with open(folder / "ids.jsonl", "ab") as fh:
        fh.write(b'"zz"\n"half')
    again = PartialStore.open(out, {"k": 1})
    assert again.resumed and again.rows == 3 and again.records_done == 4 and again.discarded is None
    again.append(np.ones((1, 4), np.float32), ["e"], [], 1)
    assert again.ids() == ["a", "b", "c", "e"] and again.skipped_items() == [("d", "empty")]
    np.testing.assert_array_equal(again.embeddings()[:3], np.eye(3, 4, dtype=np.float32))
    again.finish(out, {"model": "m"})
    with h5py.File(out, "r") as f:
        assert f["embeddings"].shape == (4, 4) and list(f["ids"].asstr()[()]) == ["a", "b", "c", "e"]
    assert not folder.exists()


def test_bias_and_search_outputs_on_a_full_disk(tmp_path):
    """disk full on a bias/search output: one line, exit 2, nothing left, no crash inside HDF5."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g.npy", rng.standard_normal((3000, 64)).astype(np.float32))
    np.save(tmp_path / "r.npy", rng.standard_normal((500, 64)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((3000, 64)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    nnn = [sys.executable, "-m", "nnn_cli"]
    with _tmpfs(tmp_path / "mnt", "200k") as mnt:
        bias = mnt / "b.h5"
        proc = subprocess.run(
            nnn
            + [
                "bias",
                tmp_path / "g.npy",
                "--reference",
                tmp_path / "r.npy",
                "--alpha",
                "0.5",
                "--k",
                "32",
                "-o",
                bias,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert _one_error_line(proc) == f"Error: disk full writing {bias}"
        assert list(mnt.iterdir()) in ([], [mnt / ".b.h5.lock"])
        ok = tmp_path / "b.h5"
        subprocess.run(
            nnn
            + ["bias", tmp_path / "g.npy", "--reference", tmp_path / "r.npy", "--alpha", "0.5", "--k", "32", "-o", ok],
            check=True,
            env=env,
            timeout=300,
            capture_output=True,
        )
        res = mnt / "res.h5"
        proc = subprocess.run(
            nnn
            + ["search", tmp_path / "q.npy", "--gallery", tmp_path / "g.npy", "--bias", ok, "--top-k", "50", "-o", res],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert _one_error_line(proc) == f"Error: disk full writing {res}"
        assert not res.exists() and not [p for p in mnt.iterdir() if p.name.endswith(".tmp")]


def test_store_disk_error_is_output_error(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "o.h5"
    store = PartialStore.open(out, {"k": 1})
    store.append(np.ones((2, 4), np.float32), ["a", "b"], [], 2)
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=f"^disk full writing {partial_path(out)}$"):
        store.append(np.ones((2, 4), np.float32), ["c", "d"], [], 2)
    monkeypatch.setattr(os, "fsync", real)
    assert store.rows == 2
    store.close()
    again = PartialStore.open(out, {"k": 1})
    assert again.rows == 2 and again.ids() == ["a", "b"]
    again.close()
