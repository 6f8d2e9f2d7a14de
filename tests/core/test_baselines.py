"""DN, QBNorm, DualIS and DualDIS against literal, unblocked numpy transcriptions of their formulas."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.core.baseline_sweep import tune_baseline
from nnn_cli.core.baselines import (
    BaselineParams,
    activation_set,
    log_sum_exp_scores,
    rank_dn,
    rank_dualdis,
    rank_dualis,
    rank_inverted_softmax,
)
from nnn_cli.core.compare import bootstrap_recall, compare_methods
from nnn_cli.core.methods import parse_methods
from nnn_cli.core.truth import Truth
from nnn_cli.errors import ParameterError


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(7)
    d = 12
    g = unit(rng.standard_normal((40, d)))
    q = unit(rng.standard_normal((25, d)))
    ref = unit(rng.standard_normal((60, d)))
    bank = unit(rng.standard_normal((30, d)))
    return q.astype(np.float32), g.astype(np.float32), ref.astype(np.float32), bank.astype(np.float32)


def literal_rank(scores, k=10):
    """Rank each row by score descending, ties by lower index (stable sort)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def assert_same_ranking(ours, literal_scores, k=10):
    """Rankings agree; where two literal scores tie to 1e-9 relative, either order is accepted."""
    expected = literal_rank(literal_scores, k)
    rows = np.arange(len(ours))[:, None]
    np.testing.assert_allclose(literal_scores[rows, ours], literal_scores[rows, expected], rtol=1e-9, atol=0)
    assert (ours == expected).mean() > 0.99


def literal_dualis(q, g, ref, bank, b1, b2):
    """Paper Eq. 3-5 exactly, float64: exp / sum exp for each factor, then the product."""
    q, g, ref, bank = (a.astype(np.float64) for a in (q, g, ref, bank))
    s = q @ g.T
    s_r = np.exp(b1 * s) / np.exp(b1 * (bank @ g.T)).sum(axis=0)[None, :]
    s_q = np.exp(b2 * s) / np.exp(b2 * (ref @ g.T)).sum(axis=0)[None, :]
    return s_r * s_q


def test_dn_matches_literal(small):
    q, g, ref, bank = small
    for lam in (0.0, 0.5, 1.0):
        for gb in (None, bank):
            g_mean = (g if gb is None else gb).astype(np.float64).mean(axis=0)
            lit = (q - lam * ref.astype(np.float64).mean(axis=0)) @ (g - lam * g_mean).T
            assert_same_ranking(rank_dn(q, g, ref, lam, gb, top_k=10), lit)


def test_inverted_softmax_matches_literal(small):
    q, g, ref, _ = small
    for beta in (1.0, 5.0, 20.0):
        s = q.astype(np.float64) @ g.T.astype(np.float64)
        lit = np.exp(beta * s) / np.exp(beta * (ref.astype(np.float64) @ g.T.astype(np.float64))).sum(axis=0)
        assert_same_ranking(rank_inverted_softmax(q, g, ref, beta, top_k=10), lit)


@pytest.mark.parametrize("b1,b2", [(1.0, 10.0), (5.0, 20.0), (0.0, 20.0), (3.0, 0.0)])
def test_dualis_matches_literal(small, b1, b2):
    q, g, ref, bank = small
    assert_same_ranking(rank_dualis(q, g, ref, b1, b2, bank, top_k=10), literal_dualis(q, g, ref, bank, b1, b2))
    # default gallery bank: the gallery itself
    assert_same_ranking(rank_dualis(q, g, ref, b1, b2, None, top_k=10), literal_dualis(q, g, ref, g, b1, b2))


def test_dualdis_matches_literal(small):
    q, g, ref, bank = small
    b1, b2 = 2.0, 15.0
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    top1 = literal_rank(s, 1)[:, 0]
    act_q = np.zeros(len(g), bool)
    act_q[literal_rank(ref.astype(np.float64) @ g.T.astype(np.float64), 1)[:, 0]] = True
    act_r = np.zeros(len(g), bool)
    act_r[literal_rank(bank.astype(np.float64) @ g.T.astype(np.float64), 1)[:, 0]] = True
    np.testing.assert_array_equal(activation_set(g, ref), act_q)
    np.testing.assert_array_equal(activation_set(g, bank), act_r)
    s_r = np.exp(b1 * s) / np.exp(b1 * (bank.astype(np.float64) @ g.T)).sum(axis=0)
    s_q = np.exp(b2 * s) / np.exp(b2 * (ref.astype(np.float64) @ g.T)).sum(axis=0)
    # App. A1: an inactive factor is replaced by the raw score s (neither active: s itself, not s * s)
    lit = np.where(act_r[top1][:, None], s_r, s) * np.where(act_q[top1][:, None], s_q, s)
    neither = ~act_r[top1] & ~act_q[top1]
    lit[neither] = s[neither]
    assert neither.any() and (act_q[top1] & ~act_r[top1]).any(), "test data should exercise several groups"
    assert_same_ranking(rank_dualdis(q, g, ref, b1, b2, bank, top_k=10), lit)


def test_log_sum_exp_blocked_is_stable_and_exact(small):
    _, g, ref, _ = small
    betas = [0.0, 1.0, 400.0]
    ours = log_sum_exp_scores(g, ref, betas, block_rows=7, bank_block=11)
    s = ref.astype(np.float64) @ g.T.astype(np.float64)
    for j, beta in enumerate(betas):
        x = beta * s
        m = x.max(axis=0)
        expected = m + np.log(np.exp(x - m).sum(axis=0))
        np.testing.assert_allclose(ours[j], expected, rtol=1e-5, atol=1e-4)
    assert np.isfinite(ours).all()


def test_parse_methods_and_params():
    assert parse_methods("baseline, nnn,dn,dn") == ("baseline", "nnn", "dn")
    with pytest.raises(ParameterError):
        parse_methods("baseline,bogus")
    with pytest.raises(ParameterError):
        BaselineParams(db_beta1=0, db_beta2=0).check()
    with pytest.raises(ParameterError):
        BaselineParams(dn_lambda=-1).check()


def test_methods_beat_baseline_on_hub_data(hub_data):
    truth = Truth.from_array(hub_data.truth, len(hub_data.queries), len(hub_data.gallery))
    runs = compare_methods(
        hub_data.queries,
        hub_data.gallery,
        truth,
        ["baseline", "nnn", "dn", "qbnorm", "dbnorm", "dbnorm_dis"],
        reference=hub_data.reference,
        nnn_alpha=0.75,
        nnn_k=16,
    )
    r1 = {m: r.result.recall["R@1"] for m, r in runs.items()}
    for m in ("nnn", "qbnorm", "dbnorm", "dbnorm_dis"):
        assert r1[m] > r1["baseline"] + 5, r1


def test_tune_baseline_picks_grid_max(hub_data):
    truth = Truth.from_array(hub_data.truth, len(hub_data.queries), len(hub_data.gallery))
    out = tune_baseline(
        "qbnorm", hub_data.queries, hub_data.gallery, truth, hub_data.reference, {"qb_beta": [1.0, 10.0, 40.0]}
    )
    assert len(out["grid"]) == 3
    assert out["R@1"] == max(p["R@1"] for p in out["grid"])
    out = tune_baseline(
        "dbnorm",
        hub_data.queries,
        hub_data.gallery,
        truth,
        hub_data.reference,
        {"db_beta1": [0.0, 1.0], "db_beta2": [10.0, 40.0]},
    )
    assert len(out["grid"]) == 4 and set(out["best"]) == {"db_beta1", "db_beta2"}
    # beta1 = 0 rows equal QBNorm with the same beta2
    qb = tune_baseline("qbnorm", hub_data.queries, hub_data.gallery, truth, hub_data.reference, {"qb_beta": [10.0]})
    assert out["grid"][0]["R@1"] == qb["grid"][0]["R@1"]
    dn = tune_baseline("dn", hub_data.queries, hub_data.gallery, truth, hub_data.reference, {"dn_lambda": [0.0, 0.5]})
    assert dn["best"]["dn_lambda"] in (0.0, 0.5)


def test_bootstrap_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 20, 500)
    has = np.ones(500, bool)
    a = bootstrap_recall(ranks, has, 300, seed=3)
    b = bootstrap_recall(ranks, has, 300, seed=3)
    assert a == b
    for k in (1, 5, 10):
        point = 100.0 * np.mean(ranks < k)
        lo, hi = a[f"R@{k}_ci"]
        assert lo <= point <= hi and hi - lo < 15
    assert bootstrap_recall(ranks, has, 300, seed=4) != a


def test_cli_eval_methods_json(hub_files):
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--queries",
            str(hub_files["queries"]),
            "--gallery",
            str(hub_files["gallery"]),
            "--truth",
            str(hub_files["truth"]),
            "--reference",
            str(hub_files["reference"]),
            "--alpha",
            "0.75",
            "--k",
            "16",
            "--methods",
            "baseline,nnn,dn,qbnorm,dbnorm,dbnorm_dis",
            "--bootstrap",
            "50",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in ("baseline", "nnn", "dn", "qbnorm", "dbnorm", "dbnorm_dis"):
        assert {"R@1", "R@5", "R@10", "seconds", "R@1_ci", "R@10_ci"} <= set(out[key]), key
        lo, hi = out[key]["R@1_ci"]
        assert lo <= out[key]["R@1"] <= hi
    assert out["dbnorm"]["params"] == {"db_beta1": 1.0, "db_beta2": 50.0}
    assert out["gallery_bank"] == "gallery"


def test_cli_eval_methods_bad_input(hub_files):
    base = [
        "eval",
        "--queries",
        str(hub_files["queries"]),
        "--gallery",
        str(hub_files["gallery"]),
        "--truth",
        str(hub_files["truth"]),
    ]
    runner = CliRunner()
    res = runner.invoke(app, base + ["--bias", "x.h5", "--methods", "nope"])
    assert res.exit_code == 2 and "unknown method" in res.output
    res = runner.invoke(
        app, base + ["--reference", str(hub_files["reference"]), "--methods", "baseline,dn", "--dn-lambda", "-1"]
    )
    assert res.exit_code == 2
    res = runner.invoke(
        app,
        base
        + ["--reference", str(hub_files["reference"]), "--methods", "dbnorm", "--db-beta1", "0", "--db-beta2", "0"],
    )
    assert res.exit_code == 2 and "both be 0" in res.output
    # comparison methods alone need no --alpha/--k
    res = runner.invoke(
        app, base + ["--reference", str(hub_files["reference"]), "--methods", "baseline,dn", "--json", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)) >= {"baseline", "dn"}


def test_cli_tune_method(hub_files, tmp_path):
    out_path = tmp_path / "p.json"
    res = CliRunner().invoke(
        app,
        [
            "tune",
            "-Q",
            str(hub_files["queries"]),
            "-g",
            str(hub_files["gallery"]),
            "-t",
            str(hub_files["truth"]),
            "-r",
            str(hub_files["reference"]),
            "-o",
            str(out_path),
            "--method",
            "dbnorm",
            "--method-grid",
            "db_beta1=0,1;db_beta2=10,40",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out_path.read_text())
    assert doc["method"] == "dbnorm" and len(doc["grid"]) == 4
    assert doc["R@1"] == max(p["R@1"] for p in doc["grid"])
    bad = CliRunner().invoke(
        app,
        [
            "tune",
            "-Q",
            str(hub_files["queries"]),
            "-g",
            str(hub_files["gallery"]),
            "-t",
            str(hub_files["truth"]),
            "-r",
            str(hub_files["reference"]),
            "-o",
            str(tmp_path / "q.json"),
            "--method",
            "bogus",
        ],
    )
    assert bad.exit_code == 2 and not (tmp_path / "q.json").exists()
    bad = CliRunner().invoke(
        app,
        [
            "tune",
            "-Q",
            str(hub_files["queries"]),
            "-g",
            str(hub_files["gallery"]),
            "-t",
            str(hub_files["truth"]),
            "-r",
            str(hub_files["reference"]),
            "-o",
            str(tmp_path / "q.json"),
            "--method",
            "qbnorm",
            "--method-grid",
            "nope=1",
        ],
    )
    assert bad.exit_code == 2 and "method-grid" in bad.output


def test_eval_reads_tuned_method_params(tmp_path, hub_files):
    """`nnn tune --method` output feeds `nnn eval --method-params`; bad files exit 2."""
    import json

    from typer.testing import CliRunner

    from nnn_cli.cli.application import app

    runner = CliRunner()
    common = [
        "--queries",
        str(hub_files["queries"]),
        "--gallery",
        str(hub_files["gallery"]),
        "--truth",
        str(hub_files["truth"]),
        "--reference",
        str(hub_files["reference"]),
    ]
    res = runner.invoke(
        app,
        [
            "tune",
            "--method",
            "qbnorm",
            *common,
            "-o",
            str(tmp_path / "qb.json"),
            "--method-grid",
            "qb_beta=5,40",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    best = json.loads((tmp_path / "qb.json").read_text())["best"]["qb_beta"]
    res = runner.invoke(
        app, ["eval", *common, "--methods", "qbnorm", "--method-params", str(tmp_path / "qb.json"), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["qbnorm"]["params"]["qb_beta"] == best
    (tmp_path / "bad.json").write_text(json.dumps({"best": {"nonsense": 1}}))
    res = runner.invoke(app, ["eval", *common, "--methods", "qbnorm", "--method-params", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "nnn tune --method" in res.stderr
