"""The IVF coarse stage at scale (two-level assignment and probing, the probe-gap rule) and its tuning."""

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.topk import set_workers, topk_scores
from nnn_cli.scale.index import coarse as coarse_mod
from nnn_cli.scale.index.build import build_index
from nnn_cli.scale.index.choose import IndexChoice, choose_index
from nnn_cli.scale.index.coarse import assign_lists, coarse_for, probe, probe_scored
from nnn_cli.scale.index.depth import choose_gap, gap_curve, score_floor, score_recall
from nnn_cli.scale.index.listscan import list_hits, list_major_topk, probe_lists


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    d = make_hub_data(n_gallery=600, n_queries=10, n_reference=6000, dim=24, n_clusters=8, seed=5)
    return unit(d.gallery), unit(d.reference)


@pytest.fixture()
def two_level(monkeypatch):
    """Two levels from 16 lists (the real threshold is for 512+), small tiles so tests cross tile edges."""
    monkeypatch.setattr(coarse_mod, "TWO_LEVEL_MIN_LISTS", 16)
    monkeypatch.setattr(coarse_mod, "COARSE_TILE", 128)
    coarse_mod._CACHE.clear()
    yield
    coarse_mod._CACHE.clear()


def flat_top(queries, centroids, n):
    scores = queries @ centroids.T
    return np.lexsort((np.broadcast_to(np.arange(len(centroids)), scores.shape), -scores), axis=1)[:, :n]


def test_two_level_groups_partition_the_lists_deterministically(data, two_level):
    _, ref = data
    cents = unit(ref[:64].copy())
    c = coarse_for(cents)
    assert c.two_level and len(c.members) <= 8  # about sqrt(64) groups
    assert np.array_equal(np.sort(np.concatenate(c.members)), np.arange(64))
    for m, vecs in zip(c.members, c.group_vectors):
        np.testing.assert_array_equal(vecs, cents[m])
    coarse_mod._CACHE.clear()
    again = coarse_for(cents.copy())
    assert all(np.array_equal(a, b) for a, b in zip(c.members, again.members))
    np.testing.assert_array_equal(c.supers, again.supers)


def test_two_level_probe_equals_flat_when_every_group_is_scored(data, two_level, monkeypatch):
    gallery, ref = data
    cents = unit(ref[:64].copy())
    monkeypatch.setattr(coarse_mod, "GROUP_PROBES", 64)  # every group: every centroid is a candidate
    got = probe(coarse_for(cents), gallery, 5)
    assert np.array_equal(np.sort(got, axis=1), np.sort(flat_top(gallery, cents, 5), axis=1))


def test_two_level_probe_mostly_finds_the_best_lists(data, two_level):
    from nnn_cli.core.kmeans import spherical_kmeans

    gallery, ref = data
    cents = spherical_kmeans(ref, 64, 10)
    got = probe(coarse_for(cents), gallery, 3)
    want = flat_top(gallery, cents, 3)
    assert (got[:, 0] == want[:, 0]).mean() > 0.8  # 8 weak clusters in 24 dimensions: a hard case
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(got, want)]) / 3 > 0.7
    assert np.array_equal(probe(coarse_for(cents), gallery, 3, flat=True), want)  # flat: the exact best
    labels = assign_lists(coarse_for(cents), gallery)
    assert np.array_equal(labels, got[:, 0])


def test_gap_rule_takes_the_lists_within_the_gap_of_the_best_at_most_nprobe():
    # hand-made scores: one-hot queries pick a column of the centroid matrix
    cents = np.array([[0.9, 0.1], [0.85, 0.5], [0.5, 0.84], [0.1, 0.95], [0.88, 0.2]], dtype=np.float32)
    q = np.eye(2, dtype=np.float32)
    c = coarse_for(cents)  # 5 lists: flat
    # row 0 scores 0.9, 0.85, 0.5, 0.1, 0.88; row 1 scores 0.1, 0.5, 0.84, 0.95, 0.2
    np.testing.assert_array_equal(probe(c, q, 5, gap=0.03), [[0, 4, -1, -1, -1], [3, -1, -1, -1, -1]])
    np.testing.assert_array_equal(probe(c, q, 5, gap=0.06), [[0, 4, 1, -1, -1], [3, -1, -1, -1, -1]])
    np.testing.assert_array_equal(probe(c, q, 2, gap=0.5), [[0, 4], [3, 2]])
    ids, vals = probe_scored(c, q, 3, gap=0.12)
    np.testing.assert_array_equal(ids, [[0, 4, 1], [3, 2, -1]])
    np.testing.assert_allclose(vals, [[0.9, 0.88, 0.85], [0.95, 0.84, -np.inf]])
    # equal scores: the lower list first
    tied = np.array([[0.5, 0.0], [0.7, 0.0], [0.7, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(probe(coarse_for(tied), q[:1], 3, gap=0.0), [[1, 2, -1]])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.6), st.integers(1, 12))
def test_gap_rule_matches_brute_force(seed, gap, nprobe):
    rng = np.random.default_rng(seed)
    cents = unit(rng.standard_normal((12, 6)).astype(np.float32))
    q = unit(rng.standard_normal((40, 6)).astype(np.float32))
    got = probe(coarse_for(cents), q, nprobe, gap=gap)
    scores = q @ cents.T
    for row, s in zip(got, scores):
        order = np.lexsort((np.arange(12), -s))
        want = [j for j in order if s[j] >= s.max() - np.float32(gap)][:nprobe]
        kept = [j for j in row if j >= 0]
        # the GEMM's last bits may differ from this product: compare away from the threshold
        safe = [j for j in order[:nprobe] if abs(s[j] - (s.max() - gap)) > 1e-5]
        assert set(safe) & set(want) == set(safe) & set(kept)
        assert list(row[len(kept) :]) == [-1] * (len(row) - len(kept))


@pytest.mark.parametrize("gap", [None, 0.05])
def test_probe_same_bytes_whatever_threads_and_tile_aligned_splits(data, two_level, gap):
    gallery, ref = data
    c = coarse_for(unit(ref[:64].copy()))
    try:
        set_workers(1)
        one = probe(c, gallery, 6, gap=gap)
        set_workers(3)
        three = probe(c, gallery, 6, gap=gap)
    finally:
        set_workers(None)
    split = np.vstack([probe(c, gallery[s : s + 256], 6, gap=gap) for s in range(0, len(gallery), 256)])
    assert np.array_equal(one, three) and np.array_equal(one, split)


def test_two_level_ivf_build_and_scan(data, two_level):
    """An IVF built through two levels is a plain IVF-Flat whose lists hold each row once; scanning every
    list stays exact, and a gap-probed scan is deterministic across threads."""
    gallery, ref = data
    ivf = build_index(ref, choose_index("ivf", 600, len(ref), ref.shape[1], 8, nlist=48), "ip")
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert sizes.sum() == len(ref) and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
    np.testing.assert_allclose(list_major_topk(ivf, gallery, 8, ivf.nlist), topk_scores(gallery, ref, 8), atol=2e-6)
    a = list_major_topk(ivf, gallery, 8, 10, threads=1, gap=0.05)
    b = list_major_topk(ivf, gallery, 8, 10, threads=3, gap=0.05)
    assert np.array_equal(a, b)
    wider = list_major_topk(ivf, gallery, 8, 10, gap=0.3)  # a superset of the lists: every score at least
    assert (wider >= a - 1e-6).all() and (wider > a + 1e-6).any()  # 1e-6: GEMM rounding


def test_list_hits_counts_each_lists_vectors_above_the_floor(data):
    gallery, ref = data
    ivf = build_index(ref, choose_index("ivf", 600, len(ref), ref.shape[1], 8, nlist=20), "ip")
    probes = probe_lists(ivf, gallery[:50], 4)
    probes[3, 2:] = -1
    floor = score_floor(topk_scores(gallery[:50], ref, 8))
    got = list_hits(ivf, gallery[:50], probes, floor)
    for i in range(50):
        for j in range(4):
            if probes[i, j] < 0:
                assert got[i, j] == 0
                continue
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(int(probes[i, j])), ivf.invlists.list_size(int(probes[i, j])))
            want = int(((ref[np.array(ids)] @ gallery[i]) >= floor[i] - 1e-6).sum())
            assert abs(got[i, j] - want) <= 1  # rounding at the floor only


def brute_recall(gaps, hits, k, g):
    probed = gaps <= g
    return (np.minimum((hits * probed).sum(axis=1), k) / k).mean()


def test_gap_curve_hand_computed():
    k = 4
    gaps = np.array([[0.0, 0.1, 0.3], [0.0, 0.2, np.inf]])
    hits = np.array([[2, 1, 3], [3, 0, 0]])
    values, mean, se = gap_curve(gaps, hits, k)
    np.testing.assert_allclose(values, [0.0, 0.1, 0.2, 0.3])
    # row 0: 2/4, then 3/4 at 0.1, capped at 4/4 at 0.3; row 1: 3/4 throughout
    np.testing.assert_allclose(mean, [0.625, 0.75, 0.75, 0.875])
    np.testing.assert_allclose(se, [0.125, 0.0, 0.0, 0.125])  # population sd / sqrt(rows - 1)
    picked = choose_gap(gaps, hits, k, 0.7, z=0.0)
    assert picked["reached"] and picked["gap"] == pytest.approx(0.15) and picked["predicted_recall"] == 0.75
    assert choose_gap(gaps, hits, k, 0.7, z=1.0)["gap"] == pytest.approx(0.15)  # se 0 there
    assert choose_gap(gaps, hits, k, 0.6, z=0.0)["gap"] == pytest.approx(0.05)
    assert choose_gap(gaps, hits, k, 0.6, z=1.0)["gap"] == pytest.approx(0.15)  # 0.625 - 0.125 misses at 0
    missed = choose_gap(gaps, hits, k, 0.95)
    assert not missed["reached"] and missed["gap"] > 0.3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8))
def test_gap_curve_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    gaps = np.sort(rng.choice([0.0, 0.05, 0.1, 0.2, 0.4], size=(30, 6)), axis=1)
    gaps[:, 0] = 0.0
    gaps[rng.random((30, 6)) < 0.1] = np.inf
    gaps = np.sort(gaps, axis=1)
    gaps[:, 0] = 0.0  # a row's best list is always probed
    hits = rng.integers(0, 4, size=(30, 6))
    values, mean, se = gap_curve(gaps, hits, k)
    for v, m, s in zip(values, mean, se):
        per_row = np.minimum((hits * (gaps <= v)).sum(axis=1), k) / k
        assert m == pytest.approx(per_row.mean())
        assert s == pytest.approx(per_row.std(ddof=0) / np.sqrt(29), abs=1e-6)
    picked = choose_gap(gaps, hits, k, 0.5)
    if picked["reached"]:
        assert brute_recall(gaps, hits, k, picked["gap"]) == pytest.approx(picked["predicted_recall"])


def test_recall_target_tunes_a_probe_gap_reached_and_reported(data, two_level):
    from nnn_cli.scale.index.steps import indexed_reference_topk

    gallery, ref = data
    exact = topk_scores(gallery, ref, 8)
    choice = choose_index("ivf", len(gallery), len(ref), ref.shape[1], 8, nlist=48, recall=0.9)
    try:
        set_workers(1)
        one, run = indexed_reference_topk(gallery, ref, 8, "ip", choice)
        set_workers(2)
        two, _ = indexed_reference_topk(
            gallery, ref, 8, "ip", choose_index("ivf", len(gallery), len(ref), ref.shape[1], 8, nlist=48, recall=0.9)
        )
    finally:
        set_workers(None)
    assert np.array_equal(one, two)
    tuned = run.info["index_tuned"]
    assert tuned["knob"] == "probe_gap" and tuned["reached"] and tuned["recall"] >= 0.9
    assert run.info["index_sample_recall"] >= 0.9 and choice.probe_gap == pytest.approx(tuned["value"], abs=1e-6)
    assert choice.probe_gap is not None and choice.probe_max == tuned["max_probes"]
    assert run.to_dict()["index_probe_gap"] == choice.probe_gap
    assert score_recall(one, exact) >= 0.85  # all rows; the sample is tuned with a confidence margin
    assert "lists within" in choice.describe()


def test_explicit_nprobe_keeps_the_fixed_depth(data):
    gallery, ref = data
    choice = IndexChoice("ivf", nlist=20, nprobe=3)
    from nnn_cli.scale.index.steps import indexed_reference_topk

    _, run = indexed_reference_topk(gallery, ref, 8, "ip", choice)
    assert choice.probe_gap is None and "index_tuned" not in run.info and choice.nprobe == 3


def test_a_target_the_gap_rule_cannot_reach_falls_back_to_a_fixed_nprobe(data, monkeypatch):
    """Neighbours spread over more lists than MAX_PROBES: the fixed nprobe is tuned over every depth."""
    from nnn_cli.scale.index import depth
    from nnn_cli.scale.index import steps as steps_mod
    from nnn_cli.scale.index.steps import indexed_reference_topk

    gallery, ref = data
    monkeypatch.setattr(depth, "MAX_PROBES", 1)
    monkeypatch.setattr(steps_mod, "MAX_PROBES", 1)
    choice = choose_index("ivf", len(gallery), len(ref), ref.shape[1], 8, nlist=20, recall=0.95)
    _, run = indexed_reference_topk(gallery, ref, 8, "ip", choice)
    tuned = run.info["index_tuned"]
    assert tuned["knob"] == "nprobe" and tuned["value"] > 1 and tuned["reached"]
    assert choice.probe_gap is None and choice.nprobe == tuned["value"]


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.3])
def test_trimmed_probes_keep_every_probe_in_fewer_columns(data, two_level, gap):
    gallery, ref = data
    c = coarse_for(unit(ref[:64].copy()))
    full = probe(c, gallery, 40, gap=gap)
    trimmed = probe(c, gallery, 40, gap=gap, trim=True)
    used = int((full >= 0).sum(axis=1).max())
    assert trimmed.shape == (len(gallery), used) and used < 40
    assert np.array_equal(trimmed, full[:, :used]) and (full[:, used:] == -1).all()
