"""The NNN math and search, against hand-computed cases and brute-force numpy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnn_cli import (
    augment_gallery,
    augment_queries,
    bias_from_topk,
    compute_bias,
    hubness,
    recall_from_topk,
    reference_topk,
    search,
)
from nnn_cli.core.truth import Truth
from nnn_cli.errors import MismatchError, ParameterError


def brute_bias(g, r, alpha, k):
    s = g.astype(np.float64) @ r.astype(np.float64).T
    return alpha * np.sort(s, axis=1)[:, ::-1][:, :k].mean(axis=1)


def test_bias_hand_computed():
    g = np.array([[1, 0], [0, 1]], dtype=np.float32)
    r = np.array([[1, 0], [0.5, 0.5], [0, 1], [0, 2]], dtype=np.float32)
    # item 0 scores [1, .5, 0, 0] -> top2 mean .75; item 1 scores [0, .5, 1, 2] -> top2 mean 1.5
    np.testing.assert_allclose(compute_bias(g, r, alpha=0.5, k=2), [0.375, 0.75], atol=1e-7)
    np.testing.assert_allclose(compute_bias(g, r, alpha=1.0, k=1), [1.0, 2.0], atol=1e-7)


def test_bias_matches_brute_force(hub_data):
    g, r = hub_data.gallery, hub_data.reference
    for alpha, k in [(0.75, 16), (0.25, 1), (1.5, 128)]:
        np.testing.assert_allclose(compute_bias(g, r, alpha, k, block_rows=37), brute_bias(g, r, alpha, k), atol=2e-6)


def test_topk_is_sorted_and_gives_every_k(hub_data):
    top = reference_topk(hub_data.gallery, hub_data.reference, 64)
    assert np.all(np.diff(top, axis=1) <= 0), "top-k scores must be sorted descending"
    for k in (1, 2, 7, 64):
        np.testing.assert_allclose(bias_from_topk(top, 1.0, k), top[:, :k].astype(np.float64).mean(axis=1), atol=1e-6)


def test_k_validation():
    g = np.eye(3, dtype=np.float32)
    with pytest.raises(ParameterError, match="larger than the reference"):
        compute_bias(g, g, 0.5, 4)
    with pytest.raises(ParameterError, match=">= 1"):
        compute_bias(g, g, 0.5, 0)
    with pytest.raises(ParameterError, match="alpha"):
        compute_bias(g, g, -1.0, 1)
    with pytest.raises(MismatchError, match="dimension"):
        reference_topk(g, np.eye(4, dtype=np.float32), 1)


def test_augmented_trick_is_debiased_score():
    rng = np.random.default_rng(0)
    q, g, b = rng.standard_normal((5, 8)), rng.standard_normal((7, 8)), rng.standard_normal(7)
    np.testing.assert_allclose(augment_queries(q) @ augment_gallery(g, b).T, q @ g.T - b[None, :], atol=1e-5)
    with pytest.raises(MismatchError):
        augment_gallery(g, b[:3])


def test_search_matches_brute_force(hub_data):
    q, g = hub_data.queries, hub_data.gallery
    b = compute_bias(g, hub_data.reference, 0.75, 16)
    scores, idx = search(q, g, b, 10, block_rows=50)
    full = q @ g.T - b[None, :]
    expect = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expect, 1), atol=1e-5)


def test_ties_broken_by_lower_index():
    g = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (6, 1))
    g[3] = [0.0, 1.0]
    q = np.array([[1.0, 0.0]] * 25, dtype=np.float32)  # >= 20 queries takes faiss's BLAS path too
    for bias in (None, np.zeros(6, dtype=np.float32)):
        _, idx = search(q, g, bias, 4)
        assert (idx == [0, 1, 2, 4]).all()
    _, idx = search(q[:1], g, None, 6)
    assert idx.tolist() == [[0, 1, 2, 4, 5, 3]]


def test_nnn_reduces_planted_hubs(hub_data):
    truth = Truth.from_array(hub_data.truth, len(hub_data.queries), len(hub_data.gallery))
    b = compute_bias(hub_data.gallery, hub_data.reference, 0.75, 16)
    _, base = search(hub_data.queries, hub_data.gallery, None, 10)
    _, deb = search(hub_data.queries, hub_data.gallery, b, 10)
    rb, rn = recall_from_topk(base, truth), recall_from_topk(deb, truth)
    assert rn["R@1"] > rb["R@1"] + 10
    hb, hn = hubness(base[:, 0], len(hub_data.gallery)), hubness(deb[:, 0], len(hub_data.gallery))
    assert hn["max"] < hb["max"] and hn["kurtosis"] < hb["kurtosis"]


def test_recall_multi_positive():
    # query 0: correct {2, 5}; query 1: correct {0}; query 2: correct {4} (never retrieved)
    truth = Truth.from_array(np.array([[0, 2], [0, 5], [1, 0], [2, 4]]), 3, 6)
    topk = np.array([[5, 1, 2], [3, 0, 1], [0, 1, 2]])
    r = recall_from_topk(topk, truth, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 200 / 3})


def test_recall_ignores_queries_without_truth():
    truth = Truth.from_array(np.array([[0, 1], [2, 0]]), 3, 2)
    r = recall_from_topk(np.array([[1], [1], [1]]), truth, ks=(1,))
    assert r["R@1"] == 50.0


def test_hubness_hand_computed():
    h = hubness(np.array([0, 0, 0, 1]), 4)  # counts [3, 1, 0, 0], mean 1
    assert h["max"] == 3 and h["never_retrieved"] == 0.5
    assert h["mae"] == pytest.approx(1.0)
    c = np.array([3, 1, 0, 0]) - 1.0
    assert h["skewness"] == pytest.approx(np.mean(c**3) / np.mean(c**2) ** 1.5)
    assert h["kurtosis"] == pytest.approx(np.mean(c**4) / np.mean(c**2) ** 2 - 3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 30),
    d=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    alpha=st.floats(0, 2),
    data=st.data(),
)
def test_bias_property(n, m, d, seed, alpha, data):
    k = data.draw(st.integers(1, m))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, d)).astype(np.float32)
    r = rng.standard_normal((m, d)).astype(np.float32)
    np.testing.assert_allclose(compute_bias(g, r, alpha, k, block_rows=3), brute_bias(g, r, alpha, k), atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 15), q=st.integers(1, 30), seed=st.integers(0, 10_000), data=st.data())
def test_search_property_with_ties(n, q, seed, data):
    """Scores on a coarse grid force ties; order must be (score desc, index asc)."""
    top_k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    g = rng.integers(-2, 3, (n, 3)).astype(np.float32)
    qs = rng.integers(-2, 3, (q, 3)).astype(np.float32)
    b = rng.integers(-2, 3, n).astype(np.float32)
    scores, idx = search(qs, g, b, top_k)
    full = qs @ g.T - b
    expect = np.lexsort((np.broadcast_to(np.arange(n), full.shape), -full), axis=1)[:, :top_k]
    np.testing.assert_array_equal(idx, expect)


# --- block validation: the fast path (squared norms) and its fallbacks -------
def _npy_source(tmp_path, rows):
    from nnn_cli import open_embeddings

    path = tmp_path / "x.npy"
    np.save(path, np.asarray(rows, dtype=np.float32))
    return open_embeddings(path)


def test_rows_whose_square_overflows_or_underflows_float32_are_valid(tmp_path):
    """1e20 squared is inf and 1e-30 squared is 0 in float32: neither is a bad row."""
    src = _npy_source(tmp_path, [[1e20, -1e20, 0], [1e-30, 0, 2e-30], [3, 4, 0]])
    got = src.read("cosine")
    expected = np.array([[1, -1, 0], [1, 0, 2], [3, 4, 0]], dtype=np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(src.read("ip")[0], np.float32([1e20, -1e20, 0]))


@pytest.mark.parametrize("bad,needle", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (0.0, "zero vector")])
def test_bad_row_reported_with_its_number(tmp_path, bad, needle):
    from nnn_cli.errors import InputError

    rows = np.ones((5, 3), dtype=np.float32)
    rows[3] = [bad, bad, bad] if bad == 0.0 else [1, bad, 1]
    with pytest.raises(InputError, match=f"row 3 .*{needle}|row 3 is a {needle}"):
        _npy_source(tmp_path, rows).read("cosine")
