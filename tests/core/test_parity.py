"""Parity with the authors' implementation (nnn-retrieval, import `nnn`) with --metric ip."""

import contextlib
import io

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli import compute_bias, search
from nnn_cli.cli.application import app

torch = pytest.importorskip("torch")


def oracle(gallery, reference, queries, alpha, k, top_k):
    """(bias, scores, indices) from nnn-retrieval's torch NNNRetriever/NNNRanker."""
    with contextlib.redirect_stdout(io.StringIO()):
        import nnn
    ranker = nnn.NNNRanker(
        nnn.NNNRetriever(gallery.shape[1]), gallery, reference, alternate_ks=k, batch_size=256, alternate_weight=alpha
    )
    bias = alpha * ranker.alignment_means.numpy().ravel()
    scores, indices = ranker.search(queries, top_k)
    return bias, scores, indices


def assert_same_ranking(ours_i, ours_s, their_i, their_s):
    """Indices equal except where scores tie (within float32 noise)."""
    differ = ours_i != their_i
    assert differ.mean() < 0.01
    np.testing.assert_allclose(ours_s[differ], their_s[differ], atol=1e-5)
    np.testing.assert_allclose(ours_s, their_s, atol=1e-5)


def raw_data(seed=0, n=400, m=3000, q=500, d=48):
    """Unnormalised vectors: ip parity must hold on raw inner products."""
    rng = np.random.default_rng(seed)
    hub = rng.standard_normal(d).astype(np.float32)
    g = rng.standard_normal((n, d)).astype(np.float32)
    g[:8] += 2 * hub
    r = (rng.standard_normal((m, d)) + 0.5 * hub).astype(np.float32)
    qs = (g[rng.integers(0, n, q)] + rng.standard_normal((q, d)) + 0.5 * hub).astype(np.float32)
    s = np.float32(1 / np.sqrt(d))  # unnormalised, but scores of order 1
    return g * s, r * s, qs * s


@pytest.mark.parametrize("alpha,k", [(0.75, 16), (0.25, 1), (1.5, 128), (0.5, 512)])
def test_library_parity(alpha, k):
    g, r, q = raw_data()
    their_b, their_s, their_i = oracle(g, r, q, alpha, k, 10)
    ours_b = compute_bias(g, r, alpha, k)
    np.testing.assert_allclose(ours_b, their_b, atol=1e-5)
    ours_s, ours_i = search(q, g, ours_b, 10)
    assert_same_ranking(ours_i, ours_s, their_i, their_s)


def test_cli_parity(tmp_path):
    g, r, q = raw_data(seed=3)
    for name, arr in (("g", g), ("r", r), ("q", q)):
        np.save(tmp_path / f"{name}.npy", arr)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bias",
            str(tmp_path / "g.npy"),
            "--reference",
            str(tmp_path / "r.npy"),
            "--alpha",
            "0.75",
            "--k",
            "16",
            "--metric",
            "ip",
            "-o",
            str(tmp_path / "b.h5"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "search",
            str(tmp_path / "q.npy"),
            "--gallery",
            str(tmp_path / "g.npy"),
            "--bias",
            str(tmp_path / "b.h5"),
            "--top-k",
            "10",
            "--metric",
            "ip",
            "-o",
            str(tmp_path / "res.h5"),
        ],
    )
    assert res.exit_code == 0, res.output
    their_b, their_s, their_i = oracle(g, r, q, 0.75, 16, 10)
    with h5py.File(tmp_path / "b.h5") as f:
        np.testing.assert_allclose(f["bias"][()], their_b, atol=1e-5)
        assert f.attrs["alpha"] == 0.75 and f.attrs["k"] == 16 and f.attrs["metric"] == "ip"
    with h5py.File(tmp_path / "res.h5") as f:
        assert f["indices"].dtype == np.int64 and f["scores"].dtype == np.float32
        assert_same_ranking(f["indices"][()], f["scores"][()], their_i, their_s)


def reference_case():
    """The authors' own unit test: 5 unit vectors, 20 jittered references, alpha 0.75, k 2."""
    g = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    q = np.array(
        [[0, 0.6, 0.8, 0], [0.6, 0, 0.8, 0], [0, -0.6, 0.8, 0], [-0.6, 0, 0.8, 0], [0, 0, 1, 0]], dtype=np.float32
    )
    j = 0.01
    shifts = [[0, j, 0, 0], [0, -j, 0, 0], [j, 0, 0, 0], [-j, 0, 0, 0]]
    r = np.concatenate([q + np.array(s, dtype=np.float32) for s in shifts]).astype(np.float32)
    return g, q, r


def test_reference_case_through_cli(tmp_path):
    g, q, r = reference_case()
    for name, arr in (("g", g), ("q", q), ("r", r)):
        np.save(tmp_path / f"{name}.npy", arr)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bias",
            str(tmp_path / "g.npy"),
            "-r",
            str(tmp_path / "r.npy"),
            "--alpha",
            "0.75",
            "--k",
            "2",
            "--metric",
            "ip",
            "-o",
            str(tmp_path / "b.h5"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "search",
            str(tmp_path / "q.npy"),
            "-g",
            str(tmp_path / "g.npy"),
            "-b",
            str(tmp_path / "b.h5"),
            "--top-k",
            "1",
            "--metric",
            "ip",
            "-o",
            str(tmp_path / "s.h5"),
        ],
    )
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["indices"][()].ravel().tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(f["scores"][()].ravel(), [0.14625] * 4 + [0.25], atol=2e-5)
    # and the plain search gives the authors' baseline: item 4 for everyone
    res = runner.invoke(
        app,
        [
            "search",
            str(tmp_path / "q.npy"),
            "-g",
            str(tmp_path / "g.npy"),
            "--top-k",
            "1",
            "--metric",
            "ip",
            "-o",
            str(tmp_path / "p.h5"),
        ],
    )
    with h5py.File(tmp_path / "p.h5") as f:
        assert f["indices"][()].ravel().tolist() == [4] * 5
        np.testing.assert_allclose(f["scores"][()].ravel(), [0.8] * 4 + [1.0], atol=2e-5)
    # the oracle agrees on the same inputs
    b, s, i = oracle(g, r, q, 0.75, 2, 1)
    assert i.ravel().tolist() == [0, 1, 2, 3, 4]
