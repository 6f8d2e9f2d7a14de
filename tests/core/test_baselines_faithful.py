"""Baselines against oracles transcribed from the original repositories, on data where the differences show."""

import numpy as np
import pytest
from scipy.stats import kurtosis

from nnn_cli.core.attribute import compare_attribute_bias
from nnn_cli.core.baseline_sweep import tune_baseline
from nnn_cli.core.baselines import (
    DB_COARSE,
    DEFAULT_GRIDS,
    GALLERY_BANK_WARNING,
    BaselineParams,
    activation_set,
    rank_dualdis,
    rank_dualis,
    rank_inverted_softmax,
    rank_qbnorm,
)
from nnn_cli.core.compare import compare_methods
from nnn_cli.core.leak import find_leaks
from nnn_cli.core.methods import parse_methods, rank_method
from nnn_cli.core.metrics import hubness, recall_from_topk
from nnn_cli.core.protocol import paired_truth, reference_subsample
from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.truth import Truth
from nnn_cli.data.labels import check_explicit_groups
from nnn_cli.errors import ParameterError
from tests.oracles.dbnorm_oracle import db_norm, get_skewness
from tests.oracles.qbnorm_oracle import qb_norm


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    d = make_hub_data(n_gallery=300, n_queries=600, n_reference=2000, dim=32, seed=1)
    rng = np.random.default_rng(5)
    # a separate gallery-side bank ("training items"): perturbed gallery rows
    bank = unit(d.gallery[rng.integers(0, 300, 400)] + 0.6 * rng.standard_normal((400, 32)).astype(np.float32) / 4)
    return d, bank


def s64(a, b):
    return a.astype(np.float64) @ b.astype(np.float64).T


def oracle_rank(scores, k=10):
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def agree(ours, scores, k=10):
    """Same top-k as the oracle's scores, up to exact-tie order (checked on the oracle's own values)."""
    expected = oracle_rank(scores, k)
    rows = np.arange(len(ours))[:, None]
    np.testing.assert_allclose(scores[rows, ours], scores[rows, expected], rtol=1e-9, atol=0)


def changed_rows(a, b):
    return float(np.mean((a != b).any(axis=1)))


def test_qbnorm_is_dynamic_inverted_softmax(data):
    d, _ = data
    for k in (1, 3):
        oracle = qb_norm(s64(d.reference, d.gallery), s64(d.queries, d.gallery), k=k, beta=20.0)
        ours = rank_qbnorm(d.queries, d.gallery, d.reference, 20.0, activation_k=k)
        agree(ours, oracle)
    plain = rank_inverted_softmax(d.queries, d.gallery, d.reference, 20.0)
    dis = rank_qbnorm(d.queries, d.gallery, d.reference, 20.0)
    assert changed_rows(plain, dis) > 0.01, "the data should show DIS != plain inverted softmax"
    assert parse_methods("qbnorm_is,qbnorm") == ("is", "qbnorm")
    p = BaselineParams()
    np.testing.assert_array_equal(rank_method("qbnorm", d.queries, d.gallery, d.reference, p), dis)
    np.testing.assert_array_equal(rank_method("qbnorm_is", d.queries, d.gallery, d.reference, p), plain)


@pytest.mark.parametrize("b1,b2", [(2.0, 20.0), (0.0, 20.0), (5.0, 0.0)])
def test_dualis_matches_dbnorm_code(data, b1, b2):
    d, bank = data
    # DBNorm's code: its beta1 is the query bank, beta2 the gallery bank (ours the other way round)
    oracle = db_norm(s64(d.reference, d.gallery), s64(bank, d.gallery), s64(d.queries, d.gallery), beta1=b2, beta2=b1)
    agree(rank_dualis(d.queries, d.gallery, d.reference, b1, b2, bank), oracle)


def test_dualdis_raw_score_fallback_matches_dbnorm_code(data):
    d, bank = data
    b1, b2 = 3.0, 20.0
    s = s64(d.queries, d.gallery)
    oracle = db_norm(s64(d.reference, d.gallery), s64(bank, d.gallery), s, beta1=b2, beta2=b1, dynamic_normalized=True)
    top1 = oracle_rank(s, 1)[:, 0]
    act_q = activation_set(d.gallery, d.reference)[top1]
    act_r = activation_set(d.gallery, bank)[top1]
    assert (act_q & ~act_r).any() and (~act_q & act_r).any() and (act_q & act_r).any(), "all groups exercised"
    ours = rank_dualdis(d.queries, d.gallery, d.reference, b1, b2, bank)
    neither = ~act_q & ~act_r
    agree(ours[~neither], oracle[~neither])
    # neither factor active: the raw score (the code's s * s ranks the same where the scores compared are > 0)
    agree(ours[neither], s[neither])
    assert (np.take_along_axis(s, ours, 1)[neither] > 0).all()
    # the old "multiply by 1" rule ranks differently on this data
    s_q = np.exp(b2 * s) / np.exp(b2 * s64(d.reference, d.gallery)).sum(axis=0)
    s_r = np.exp(b1 * s) / np.exp(b1 * s64(bank, d.gallery)).sum(axis=0)
    by_one = np.where(act_r[:, None], s_r, 1.0) * np.where(act_q[:, None], s_q, 1.0)
    assert changed_rows(oracle_rank(by_one), ours) > 0.01


def test_gallery_as_own_bank_activates_everything_and_warns(data):
    d, bank = data
    assert activation_set(d.gallery, d.gallery).all()
    truth = Truth.from_array(d.truth, len(d.queries), len(d.gallery))
    runs = compare_methods(d.queries, d.gallery, truth, ["dbnorm", "dbnorm_dis", "dn"], reference=d.reference)
    for m in ("dbnorm", "dbnorm_dis"):
        assert runs[m].result.extra["gallery_bank"] == "gallery"
        assert runs[m].result.extra["warnings"] == [GALLERY_BANK_WARNING]
    assert "warnings" not in runs["dn"].result.extra
    runs = compare_methods(d.queries, d.gallery, truth, ["dbnorm"], reference=d.reference, gallery_bank=bank)
    assert "warnings" not in runs["dbnorm"].result.extra
    # the bank changes DualIS rankings
    p = BaselineParams()
    a = rank_dualis(d.queries, d.gallery, d.reference, p.db_beta1, p.db_beta2)
    b = rank_dualis(d.queries, d.gallery, d.reference, p.db_beta1, p.db_beta2, bank)
    assert changed_rows(a, b) > 0.01


def test_dn_defaults_follow_zhou_et_al():
    assert BaselineParams().dn_lambda == 0.25
    assert 0.25 in DEFAULT_GRIDS["dn"]["dn_lambda"] and 0.5 in DEFAULT_GRIDS["dn"]["dn_lambda"]


def test_dn_gallery_bank_never_changes_rankings(data):
    d, bank = data
    from nnn_cli.core.baselines import rank_dn

    np.testing.assert_array_equal(
        rank_dn(d.queries, d.gallery, d.reference, 0.25), rank_dn(d.queries, d.gallery, d.reference, 0.25, bank)
    )


def test_dbnorm_sweep_is_appendix_b2(data):
    d, bank = data
    axis = DEFAULT_GRIDS["dbnorm"]["db_beta1"]
    assert axis[0] == 0.0 and len(DB_COARSE) == 20
    assert np.isclose(DB_COARSE[0], 0.001) and np.isclose(DB_COARSE[-1], 400.0)
    assert np.allclose(np.diff(np.log(DB_COARSE)), np.log(400 / 0.001) / 19)
    truth = Truth.from_array(d.truth, len(d.queries), len(d.gallery))
    for method, ranker in (("dbnorm", rank_dualis), ("dbnorm_dis", rank_dualdis)):
        out = tune_baseline(method, d.queries, d.gallery, truth, d.reference, gallery_bank=bank)
        assert out["stages"] == {"coarse": 440, "dense": 440}
        coarse = [p for p in out["grid"] if p["stage"] == "coarse"]
        assert any(p["db_beta1"] == 0 for p in coarse) and any(p["db_beta2"] == 0 for p in coarse)
        assert out["R@1"] == max(p["R@1"] for p in out["grid"])
        # the sweep's recall equals a real ranking's, at the best point and at a few others
        for point in [out["grid"][i] for i in (0, 25, 300, 700)] + [{**out["best"], "R@1": out["R@1"]}]:
            idx = ranker(d.queries, d.gallery, d.reference, point["db_beta1"], point["db_beta2"], bank)
            assert recall_from_topk(idx, truth)["R@1"] == pytest.approx(point["R@1"], abs=1e-9), (method, point)
        assert "warnings" not in out
    out = tune_baseline("dbnorm", d.queries, d.gallery, truth, d.reference, dense="none")
    assert out["gallery_bank_is_gallery"] and out["warnings"] == [GALLERY_BANK_WARNING]
    assert len(out["grid"]) == 440


def test_qbnorm_sweep_matches_rankings(data):
    d, _ = data
    truth = Truth.from_array(d.truth, len(d.queries), len(d.gallery))
    for method, ranker in (("qbnorm", rank_qbnorm), ("is", rank_inverted_softmax)):
        out = tune_baseline(method, d.queries, d.gallery, truth, d.reference, {"qb_beta": [5.0, 20.0, 80.0]})
        for point in out["grid"]:
            idx = ranker(d.queries, d.gallery, d.reference, point["qb_beta"])
            assert recall_from_topk(idx, truth)["R@1"] == pytest.approx(point["R@1"], abs=1e-9)


def test_hubness_named_statistics(data):
    d, _ = data
    idx = rank_dualis(d.queries, d.gallery, d.reference, 0.0, 20.0)
    h = hubness(idx, len(d.gallery))
    assert h["N10_skewness_dbnorm"] == pytest.approx(get_skewness(_scores_from_ranking(idx, len(d.gallery))), rel=1e-9)
    n1 = np.bincount(idx[:, 0], minlength=len(d.gallery))
    n10 = np.bincount(idx.ravel(), minlength=len(d.gallery))
    assert h["N1_kurtosis"] == pytest.approx(kurtosis(n1), rel=1e-9) and h["kurtosis"] == h["N1_kurtosis"]
    assert h["N10_kurtosis"] == pytest.approx(kurtosis(n10), rel=1e-9)
    assert h["N1_max"] == n1.max() and h["N10_max"] == n10.max()
    assert h["N1_mae"] == pytest.approx(np.abs(n1 - n1.mean()).mean())
    assert {"max", "skewness", "kurtosis", "mae", "never_retrieved"} <= set(h)
    assert "N10_kurtosis" not in hubness(idx[:, 0], len(d.gallery))


def _scores_from_ranking(idx, n):
    """A score matrix whose descending order starts with ``idx`` (for DBNorm's get_skewness)."""
    s = np.zeros((len(idx), n))
    np.put_along_axis(s, idx, np.arange(idx.shape[1], 0, -1, dtype=np.float64)[None, :], 1)
    return s


def test_attribute_bias_paper_protocol():
    labels = np.array([1, 1, 0, 0, -1, 1], dtype=np.int8)
    # 4 queries: groups 0, 0, 1, -1; rankings set by the gallery geometry
    g = np.eye(6, dtype=np.float32)
    q = np.array([[1, 0.9, 0.8, 0, 0, 0], [0, 0, 1, 0.9, 0.8, 0], [0, 0, 0, 0, 1, 0.9], [0, 0, 0, 1, 0, 0]], np.float32)
    truth = Truth.from_array(np.array([0, 3, 5, 3]), 4, 6)
    groups = np.array([0, 0, 1, -1])
    out = compare_attribute_bias(
        q,
        g,
        labels,
        np.zeros(6, np.float32),
        ns=(2,),
        truth=truth,
        query_groups=groups,
        group_names=["doctor", "nurse"],
    )
    rec = out["at"]["2"]["baseline"]
    # per-query biases at n=2: q0 (+1+1)/2=1, q1 (-1-1)/2=-1, q2 (0+1)/2=.5; doctor=(1-1)/2=0, nurse=.5
    assert rec["per_group"] == {"doctor": 0.0, "nurse": 0.5}
    assert rec["bias"] == pytest.approx(0.25)
    assert set(out["precision_at"]) == {"1", "5"}
    assert out["precision_at"]["1"]["baseline"]["per_group"] == {"doctor": 0.5, "nurse": 0.0}  # q0 hits at rank 1
    assert out["precision_at"]["1"]["baseline"]["precision"] == pytest.approx(0.25)
    with pytest.raises(ParameterError):
        check_explicit_groups("labels.csv", None, None)
    check_explicit_groups("labels.csv", "male", "female")
    check_explicit_groups("labels.npy", None, None)


def test_protocol_helpers():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((50, 8)).astype(np.float32)
    ref = np.vstack([rng.standard_normal((30, 8)).astype(np.float32), q[[4, 9]], -0.0 * q[:1] + q[:1]])
    out = find_leaks(q, ref)
    assert out.rows == [0, 4, 9] and out.to_dict()["n_duplicates"] == 3 and out.warning
    with pytest.raises(ParameterError):
        out.raise_if(True)
    assert find_leaks(q[10:], ref).warning is None
    a, b = reference_subsample(1000, 0.2, seed=3), reference_subsample(1000, 0.2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 200 and len(np.unique(a)) == 200 and not np.array_equal(a, reference_subsample(1000, 0.2, 4))
    with pytest.raises(ParameterError):
        reference_subsample(10, 0.0)
    t = paired_truth(["i2", "i1", "i2"], ["c1", "c2", "c3"], ["i1", "i2"], ["c3", "c2", "c1"])
    np.testing.assert_array_equal(t["text_to_image"], [[0, 1], [1, 0], [2, 1]])
    np.testing.assert_array_equal(t["image_to_text"], [[0, 1], [1, 0], [1, 2]])


def test_dualdis_beta1_zero_is_qbnorm_dis_as_released(data):
    """beta1 = 0: the gallery factor is absent (no gate, no factor), so DualDIS is QB-Norm's DIS (App. A2).

    The released formula at beta 0: exp(0 * s) / sum exp(0) is 1/|bank| for every row; with the gallery as its
    own bank every item is active, so the released db_norm's zero factor is exactly that constant."""
    d, bank = data
    s = s64(d.queries, d.gallery)
    oracle = db_norm(
        s64(d.reference, d.gallery), s64(d.gallery, d.gallery), s, beta1=20.0, beta2=0.0, dynamic_normalized=True
    )
    ours = rank_dualdis(d.queries, d.gallery, d.reference, 0.0, 20.0)
    agree(ours, oracle)
    agree(ours, qb_norm(s64(d.reference, d.gallery), s, k=1, beta=20.0))
    # with a separate gallery bank the zero factor has no gate either: still QB-Norm DIS over the query bank
    np.testing.assert_array_equal(
        rank_dualdis(d.queries, d.gallery, d.reference, 0.0, 20.0, bank),
        rank_qbnorm(d.queries, d.gallery, d.reference, 20.0),
    )


def test_dualdis_beta2_zero_is_dis_over_the_gallery_bank(data):
    d, bank = data
    s = s64(d.queries, d.gallery)
    # a query bank holding gallery row 0 makes item 0 active, where the released qb_norm's beta-0 ties land
    ref = np.concatenate([d.reference, d.gallery[:1]])
    oracle = db_norm(s64(ref, d.gallery), s64(bank, d.gallery), s, beta1=0.0, beta2=3.0, dynamic_normalized=True)
    ours = rank_dualdis(d.queries, d.gallery, ref, 3.0, 0.0, bank)
    agree(ours, oracle)
    agree(ours, qb_norm(s64(bank, d.gallery), s, k=1, beta=3.0))
    # the old rule (a gate on the zero factor, raw score when it is off) ranks differently on this data
    act_q = activation_set(d.gallery, ref)[oracle_rank(s, 1)[:, 0]]
    assert (~act_q).any()


def test_dualdis_both_betas_zero_refused(data):
    d, _ = data
    with pytest.raises(ParameterError, match="beta1"):
        rank_dualdis(d.queries, d.gallery, d.reference, 0.0, 0.0)
    with pytest.raises(ParameterError, match="cannot both be 0"):
        BaselineParams(db_beta1=0, db_beta2=0).check()


def test_dualdis_sweep_equals_rankings_at_zero_betas(data):
    d, bank = data
    truth = Truth.from_array(d.truth, len(d.queries), len(d.gallery))
    grid = {"db_beta1": [0.0, 3.0], "db_beta2": [0.0, 20.0]}
    doc = tune_baseline("dbnorm_dis", d.queries, d.gallery, truth, d.reference, grid, gallery_bank=bank)
    for point in doc["grid"]:
        idx = rank_dualdis(d.queries, d.gallery, d.reference, point["db_beta1"], point["db_beta2"], bank)
        assert recall_from_topk(idx, truth)["R@1"] == pytest.approx(point["R@1"]), point


def test_dualis_tiny_betas_keep_float64_rankings(data):
    """The bias's constant (about log|bank| / beta) is subtracted before the float32 cast."""
    d, bank = data
    s = s64(d.queries, d.gallery)
    oracle = db_norm(s64(d.reference, d.gallery), s64(bank, d.gallery), s, beta1=0.001, beta2=0.001)
    ours = rank_dualis(d.queries, d.gallery, d.reference, 0.001, 0.001, bank)
    same = np.mean((ours == oracle_rank(oracle)).all(axis=1))
    assert same >= 0.99, same
