"""IVF-Flat lists ordered by centroid score and scanned by prefix: the ordering, the prefix scan against brute
force, its bytes across threads and row splits, and the recall tuning that picks the prefix."""

import faiss
import numpy as np
import pytest

from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.topk import set_workers, topk_scores
from nnn_cli.scale.index.build import build_index
from nnn_cli.scale.index.choose import choose_index
from nnn_cli.scale.index.depth import score_floor, score_recall
from nnn_cli.scale.index.listscan import (
    _flat_centroids,
    flat_ivf,
    list_hits,
    list_hits_by_prefix,
    list_major_topk,
    list_vectors,
    order_lists_by_centroid,
    prefix_length,
    probe_lists,
)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    d = make_hub_data(n_gallery=500, n_queries=10, n_reference=5000, dim=24, n_clusters=6, seed=7)
    return unit(d.gallery), unit(d.reference)


def ordered_ivf(ref, nlist=20):
    index = build_index(ref, choose_index("ivf", 500, len(ref), ref.shape[1], 8, nlist=nlist), "ip")
    assert order_lists_by_centroid(flat_ivf(index))
    return index


@pytest.fixture(scope="module")
def ivf(data):
    return ordered_ivf(data[1])


@pytest.mark.parametrize(
    ("size", "fraction", "want"),
    [(0, 0.5, 0), (1, 0.01, 1), (3, 0.5, 2), (10, 0.7, 7), (10, 0.71, 8), (10, None, 10), (10, 1.0, 10), (7, 1.5, 7)],
)
def test_prefix_length_hand_computed(size, fraction, want):
    assert prefix_length(size, fraction) == want


def test_ordering_sorts_each_list_by_centroid_score_and_keeps_faiss_search(data):
    gallery, ref = data
    index = build_index(ref, choose_index("ivf", 500, len(ref), ref.shape[1], 8, nlist=20), "ip")
    ivf = flat_ivf(index)
    ivf.nprobe = 4
    before_d, before_i = index.search(gallery, 8)
    lists_before = [
        set(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst))) for lst in range(20)
    ]
    assert order_lists_by_centroid(ivf)
    assert not order_lists_by_centroid(ivf)  # already ordered: nothing moves
    centroids = _flat_centroids(ivf)
    for lst, vecs in enumerate(list_vectors(ivf)):
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), len(vecs)).copy()
        assert set(ids) == lists_before[lst]  # the same members
        np.testing.assert_array_equal(vecs, ref[ids])  # each vector moved with its id
        assert (np.diff(vecs @ centroids[lst]) <= 0).all()  # heads first
    after_d, after_i = index.search(gallery, 8)
    np.testing.assert_allclose(after_d, before_d, atol=1e-6)
    same = np.isclose(after_d, before_d, atol=1e-6) & (np.diff(after_d, axis=1, append=-np.inf) < -1e-6)
    assert np.array_equal(after_i[same], before_i[same])  # ids follow their vectors (distinct scores)


def brute_prefix_topk(ivf, queries, k, nprobe, gap, prefix):
    vecs = list_vectors(ivf)
    probes = probe_lists(ivf, queries, nprobe, gap)
    out = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for i, row in enumerate(probes):
        cand = [vecs[lst][: prefix_length(len(vecs[lst]), prefix)] for lst in row if lst >= 0]
        if cand:
            scores = np.sort(np.concatenate(cand) @ queries[i])[::-1][:k]
            out[i, : len(scores)] = scores
    return out


@pytest.mark.parametrize("prefix", [None, 0.8, 0.5, 0.2])
@pytest.mark.parametrize(("nprobe", "gap"), [(3, None), (8, 0.05)])
def test_prefix_scan_equals_brute_force(data, ivf, prefix, nprobe, gap):
    gallery, _ = data
    ours = list_major_topk(ivf, gallery, 8, nprobe, gap=gap, prefix=prefix)
    want = brute_prefix_topk(flat_ivf(ivf), gallery, 8, nprobe, gap, prefix)
    assert np.array_equal(np.isinf(ours), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(ours[finite], want[finite], atol=2e-6)


def test_a_shorter_prefix_scans_a_subset():
    """Per row, the prefix's top-k can only be lower or equal, value by value, than the whole lists'."""
    d = make_hub_data(n_gallery=300, n_queries=10, n_reference=3000, dim=16, n_clusters=4, seed=11)
    gallery, ref = unit(d.gallery), unit(d.reference)
    index = ordered_ivf(ref, nlist=12)
    runs = [list_major_topk(index, gallery, 8, 4, prefix=p) for p in (None, 0.8, 0.5, 0.2)]
    for longer, shorter in zip(runs, runs[1:]):
        assert (shorter <= longer + 1e-6).all()
    assert (runs[-1] < runs[0] - 1e-6).any()  # a short prefix does drop neighbours here


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prefix_scan_same_bytes_however_the_rows_are_split(data, ivf, threads, monkeypatch):
    from nnn_cli.scale.index import listscan

    gallery, _ = data
    monkeypatch.setattr(listscan, "LIST_ROW_BLOCK", 64)
    whole = list_major_topk(ivf, gallery, 8, 6, threads=threads, gap=0.1, prefix=0.6)
    sliced = np.vstack(
        [list_major_topk(ivf, gallery[s : s + 128], 8, 6, threads=1, gap=0.1, prefix=0.6) for s in range(0, 500, 128)]
    )
    assert np.array_equal(whole, sliced)
    monkeypatch.setattr(listscan, "PRIVATE_BEST_BYTES", 1)
    assert np.array_equal(list_major_topk(ivf, gallery, 8, 6, threads=threads, gap=0.1, prefix=0.6), whole)


def test_list_hits_by_prefix_counts_within_each_prefix(data, ivf):
    gallery, ref = data
    sample = gallery[:60]
    floor = score_floor(topk_scores(sample, ref, 8))
    probes = probe_lists(flat_ivf(ivf), sample, 5)
    probes[::7, -1] = -1  # padding counts nothing
    fractions = (1.0, 0.75, 0.3)
    got = list_hits_by_prefix(ivf, sample, probes, floor, fractions)
    vecs = list_vectors(flat_ivf(ivf))
    for f, fraction in enumerate(fractions):
        for i in range(len(sample)):
            for j, lst in enumerate(probes[i]):
                head = vecs[lst][: prefix_length(len(vecs[lst]), fraction)] if lst >= 0 else vecs[0][:0]
                assert got[f, i, j] == int((head @ sample[i] >= floor[i]).sum())
    np.testing.assert_array_equal(got[0], list_hits(ivf, sample, probes, floor))


def clustered(n, seed, dim=64, n_clusters=8, noise=1.2):
    """bench_scale.py's shape of data: shared centres, wide isotropic noise (neighbours lean to the centre)."""
    centres = np.random.default_rng(7).standard_normal((n_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return unit(centres[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32))


def test_recall_tuning_picks_the_cheapest_prefix_that_reaches_the_target(monkeypatch):
    from nnn_cli.scale.index import steps as steps_mod
    from nnn_cli.scale.index.steps import indexed_reference_topk

    gallery, ref = clustered(600, 1), clustered(6000, 2)
    exact = topk_scores(gallery, ref, 8)
    results = {}
    for prefixes in ((1.0,), (1.0, 0.8, 0.6)):
        monkeypatch.setattr(steps_mod, "PROBE_PREFIXES", prefixes)
        choice = choose_index("ivf", len(gallery), len(ref), ref.shape[1], 8, nlist=40, recall=0.9)
        topk, run = indexed_reference_topk(gallery, ref, 8, "ip", choice)
        results[prefixes] = (choice, run.info["index_tuned"], topk, run)
    whole, tuned_whole, _, _ = results[(1.0,)]
    choice, tuned, topk, run = results[(1.0, 0.8, 0.6)]
    assert whole.probe_prefix is None and tuned_whole["list_prefix"] == 1.0
    assert tuned["reached"] and tuned["recall"] >= 0.9
    assert tuned["mean_vectors_scanned"] < tuned_whole["mean_vectors_scanned"]  # whole lists were a candidate
    assert choice.probe_prefix == tuned["list_prefix"] < 1  # on this data a prefix is cheaper
    assert f"first {choice.probe_prefix:.0%}" in choice.describe()
    assert run.to_dict()["index_probe_prefix"] == choice.probe_prefix
    assert score_recall(topk, exact) >= 0.85
    try:  # the tuned run is the same bytes whatever the thread count
        set_workers(1)
        again, _ = indexed_reference_topk(
            gallery, ref, 8, "ip", choose_index("ivf", len(gallery), len(ref), ref.shape[1], 8, nlist=40, recall=0.9)
        )
    finally:
        set_workers(None)
    assert np.array_equal(again, topk)
