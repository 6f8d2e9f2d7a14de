"""`--index` for `nnn bias` and `nnn search`: every choice, auto, tuning, save/load, and --device fallback."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli import open_embeddings
from nnn_cli.cli.application import app
from nnn_cli.core.nnn import compute_bias, reference_topk
from nnn_cli.core.search import search
from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.errors import MismatchError, ParameterError
from nnn_cli.scale.device import NO_GPU_MESSAGE, resolve_device
from nnn_cli.scale.index.build import load_index
from nnn_cli.scale.index.choose import choose_index, estimate_costs
from nnn_cli.scale.index.depth import score_recall, topk_recall
from nnn_cli.scale.index.steps import indexed_reference_topk

runner = CliRunner()
K = 8


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data():
    return make_hub_data(n_gallery=400, n_queries=300, n_reference=3000, dim=32, n_clusters=8, seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("index")
    paths = {}
    for name in ("gallery", "queries", "reference"):
        paths[name] = root / f"{name}.h5"
        with h5py.File(paths[name], "w") as f:
            f["embeddings"] = getattr(data, name)
    paths["root"] = root
    return paths


def bias_of(path):
    with h5py.File(path) as f:
        return f["bias"][()], dict(f.attrs)


@pytest.mark.parametrize("index", ["ivf", "hnsw", "IVF16,SQ8", "HNSW16"])
def test_every_index_approximates_exact_bias(tmp_path, files, index):
    exact_out, approx_out = tmp_path / "exact.h5", tmp_path / "approx.h5"
    common = ["--reference", files["reference"], "--alpha", "1", "--k", K, "-q"]
    assert run("bias", files["gallery"], *common, "-o", exact_out).exit_code == 0
    res = run("bias", files["gallery"], *common, "-o", approx_out, "--index", index, "--recall", "0.9", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["bias_mode"] == "indexed" and summary["index_sample_recall"] >= 0.9
    exact, _ = bias_of(exact_out)
    approx, attrs = bias_of(approx_out)
    assert attrs["bias_mode"] == "indexed"
    # an approximate top-k can only miss high scores: the bias is never above the exact one (up to rounding)
    assert np.all(approx <= exact + 1e-4)
    assert np.abs(approx - exact).mean() < 0.01


def test_flat_index_is_exact(tmp_path, files, data):
    out = tmp_path / "flat.h5"
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        out,
        "--index",
        "flat",
        "-q",
    )
    assert res.exit_code == 0, res.output
    b, attrs = bias_of(out)
    g, r = open_embeddings(files["gallery"]).read(), open_embeddings(files["reference"]).read()
    assert np.array_equal(b, compute_bias(g, r, 0.5, K))
    assert attrs["index"] == "flat"


def test_auto_says_what_it_chose(tmp_path, files):
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        tmp_path / "a.h5",
        "--index",
        "auto",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["index"] == "flat"
    assert "auto: exact" in res.stderr
    assert bias_of(tmp_path / "a.h5")[1]["index_reason"].startswith("auto: exact")


def test_auto_cost_model():
    # the project's measurement: N=5k, M=118k exact is ~4 s and an index does not pay for its training
    assert choose_index("auto", 5000, 118000, 512, 128).kind == "flat"
    big = choose_index("auto", 1_000_000, 1_000_000, 512, 16)
    assert big.kind == "ivf" and big.recall_target == 0.95 and "auto:" in big.reason
    exact, ivf = estimate_costs(1_000_000, 1_000_000, 512, 16)
    assert exact > 4 * ivf


@pytest.mark.parametrize(
    "kind,kw,needle",
    [
        ("ivf", {"nlist": 0}, "--nlist"),
        ("ivf", {"nlist": 10**6}, "--nlist"),
        ("hnsw", {"recall": 1.5}, "--recall"),
        ("ivf", {"nprobe": -1}, "--nprobe"),
    ],
)
def test_choose_index_bad_params(kind, kw, needle):
    with pytest.raises(ParameterError, match=needle):
        choose_index(kind, 100, 1000, 32, 4, **kw)


def test_bad_factory_string_exit_2(tmp_path, files):
    out = tmp_path / "x.h5"
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        out,
        "--index",
        "NotAnIndex42",
    )
    assert res.exit_code == 2 and "NotAnIndex42" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_save_load_round_trip_and_mismatch(tmp_path, files, data):
    idx = tmp_path / "ref.faiss"
    common = ["--alpha", "0.5", "--k", K, "-q"]
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        *common,
        "-o",
        tmp_path / "a.h5",
        "--index",
        "ivf",
        "--nprobe",
        "4",
        "--save-index",
        idx,
    )
    assert res.exit_code == 0, res.output
    assert idx.exists() and (tmp_path / "ref.faiss.json").exists()
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        *common,
        "-o",
        tmp_path / "b.h5",
        "--load-index",
        idx,
        "--nprobe",
        "4",
    )
    assert res.exit_code == 0, res.output
    assert np.array_equal(bias_of(tmp_path / "a.h5")[0], bias_of(tmp_path / "b.h5")[0])
    # a reference with another row count: refused, nothing written
    other = tmp_path / "other.npy"
    np.save(other, data.reference[:2000])
    res = run("bias", files["gallery"], "--reference", other, *common, "-o", tmp_path / "c.h5", "--load-index", idx)
    assert res.exit_code == 2 and "holds 3000 vectors" in res.stderr
    assert not (tmp_path / "c.h5").exists()
    # same size, different content: the sidecar fingerprint refuses it
    shuffled = tmp_path / "shuffled.npy"
    np.save(shuffled, data.reference[::-1])
    res = run("bias", files["gallery"], "--reference", shuffled, *common, "-o", tmp_path / "d.h5", "--load-index", idx)
    assert res.exit_code == 2 and "fingerprint" in res.stderr
    # another dimension
    with pytest.raises(MismatchError, match="d=32"):
        load_index(idx, 16, 3000, "reference")
    garbage = tmp_path / "garbage.faiss"
    garbage.write_bytes(b"not an index")
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        *common,
        "-o",
        tmp_path / "e.h5",
        "--load-index",
        garbage,
    )
    assert res.exit_code == 2 and "faiss index" in res.stderr


def test_library_indexed_topk_recall(data):
    exact = reference_topk(data.gallery, data.reference, K)
    choice = choose_index("hnsw", len(data.gallery), len(data.reference), 32, K, recall=0.95)
    approx, run_ = indexed_reference_topk(data.gallery, data.reference, K, "cosine", choice)
    assert score_recall(approx, exact) >= 0.9
    assert run_.info["index_tuned"]["reached"]


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_search_index_matches_exact_debiased(tmp_path, files, data, index):
    bias_path = tmp_path / "bias.h5"
    assert (
        run(
            "bias",
            files["gallery"],
            "--reference",
            files["reference"],
            "--alpha",
            "0.75",
            "--k",
            K,
            "-o",
            bias_path,
            "-q",
        ).exit_code
        == 0
    )
    out = tmp_path / "res.h5"
    res = run(
        "search",
        files["queries"],
        "--gallery",
        files["gallery"],
        "--bias",
        bias_path,
        "--top-k",
        5,
        "-o",
        out,
        "--index",
        index,
        "--recall",
        "0.95",
        "--save-index",
        tmp_path / "g.faiss",
    )
    assert res.exit_code == 0, res.output
    assert "recall" in res.stderr
    b = bias_of(bias_path)[0]
    _, exact_idx = search(data.queries, data.gallery, b, 5)
    with h5py.File(out) as f:
        got, scores = f["indices"][()], f["scores"][()]
        assert f.attrs["index"] == index
    assert topk_recall(got, exact_idx) >= 0.93
    # scores are exact debiased scores of the returned items
    expected = np.einsum("qd,qkd->qk", data.queries, data.gallery[got]) - b[got]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    res = run(
        "search",
        files["queries"],
        "--gallery",
        files["gallery"],
        "--bias",
        bias_path,
        "--top-k",
        5,
        "-o",
        tmp_path / "res2.h5",
        "--load-index",
        tmp_path / "g.faiss",
        "-q",
    )
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "res2.h5") as f:
        assert np.array_equal(f["indices"][()], got)


def test_search_flat_index_unchanged(tmp_path, files, data):
    out = tmp_path / "r.h5"
    assert (
        run(
            "search", files["queries"], "--gallery", files["gallery"], "--top-k", 3, "-o", out, "--index", "flat", "-q"
        ).exit_code
        == 0
    )
    with h5py.File(out) as f:
        assert np.array_equal(f["indices"][()], search(data.queries, data.gallery, None, 3)[1])


def test_device_cuda_falls_back_to_cpu(tmp_path, files, monkeypatch):
    monkeypatch.setattr("nnn_cli.scale.device.faiss_gpus", lambda: 0)
    monkeypatch.setattr("nnn_cli.scale.device.torch_cuda", lambda: False)
    assert resolve_device("cuda") == ("cpu", NO_GPU_MESSAGE)
    assert resolve_device("cpu") == ("cpu", None)
    out = tmp_path / "b.h5"
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        out,
        "--device",
        "cuda",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert NO_GPU_MESSAGE in res.stderr
    assert json.loads(res.stdout)["device"] == "cpu"
    res = run(
        "search",
        files["queries"],
        "--gallery",
        files["gallery"],
        "--top-k",
        3,
        "-o",
        tmp_path / "s.h5",
        "--device",
        "cuda",
    )
    assert res.exit_code == 0 and NO_GPU_MESSAGE in res.stderr
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        tmp_path / "c.h5",
        "--device",
        "tpu",
    )
    assert res.exit_code == 2 and "--device" in res.stderr


def test_auto_with_save_index_choosing_exact_saves_nothing(tmp_path, files):
    idx = tmp_path / "ref.faiss"
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        tmp_path / "a.h5",
        "--index",
        "auto",
        "--save-index",
        idx,
    )
    assert res.exit_code == 0, res.output
    assert "nothing saved" in res.stderr and not idx.exists()
    res = run(
        "bias",
        files["gallery"],
        "--reference",
        files["reference"],
        "--alpha",
        "0.5",
        "--k",
        K,
        "-o",
        tmp_path / "b.h5",
        "--index",
        "flat",
        "--save-index",
        idx,
    )
    assert res.exit_code == 2 and "--save-index" in res.stderr
