"""`nnn tune`: the grid sweep against brute force per cell, tie rules, unsupervised mode, CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.core.metrics import recall_from_topk
from nnn_cli.core.nnn import compute_bias, reference_topk
from nnn_cli.core.search import search
from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.truth import Truth
from nnn_cli.core.tune import (
    PAPER_ALPHAS,
    PAPER_KS,
    cell_biases,
    check_grid,
    parse_list,
    pick_best,
    top1_per_cell,
    truth_ranks,
    tune_grid,
    tune_unsupervised,
)
from nnn_cli.errors import ParameterError

runner = CliRunner()
KEYS = ("R@1", "R@5", "R@10")


def brute_force_recall(queries, gallery, reference, truth, alpha, k):
    """One cell the slow way: compute_bias + a full debiased search + recall."""
    bias = compute_bias(gallery, reference, alpha, k)
    _, idx = search(queries, gallery, bias, 10)
    return recall_from_topk(idx, truth)


@pytest.fixture(scope="module")
def small():
    return make_hub_data(n_gallery=120, n_queries=300, n_reference=700, dim=16, seed=3)


def test_paper_grid_defaults():
    assert len(PAPER_ALPHAS) == 11 and PAPER_ALPHAS[0] == 0.25 and PAPER_ALPHAS[-1] == 1.5
    assert np.allclose(np.diff(PAPER_ALPHAS), 0.125)
    assert PAPER_KS == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def test_prefix_mean_biases_equal_compute_bias(small):
    ks = [1, 2, 5, 16, 100]
    topk = reference_topk(small.gallery, small.reference, max(ks))
    biases = cell_biases(topk, [0.5, 1.25], ks)
    for ai, alpha in enumerate([0.5, 1.25]):
        for ki, k in enumerate(ks):
            direct = compute_bias(small.gallery, small.reference, alpha, k)
            np.testing.assert_allclose(biases[ai * len(ks) + ki], direct, rtol=1e-6, atol=1e-7)


def test_grid_equals_brute_force_every_cell(hub_data):
    truth = Truth.from_array(hub_data.truth, len(hub_data.queries), len(hub_data.gallery))
    result = tune_grid(hub_data.queries, hub_data.gallery, hub_data.reference, truth)
    assert len(result.grid) == 110 and result.skipped_ks == []
    one_query = 100.0 / len(hub_data.queries)
    brute = {}
    for entry in result.grid:
        r = brute_force_recall(
            hub_data.queries, hub_data.gallery, hub_data.reference, truth, entry["alpha"], entry["k"]
        )
        brute[(entry["alpha"], entry["k"])] = r
        for key in KEYS:  # equal up to float32 rounding of a near-tie (never more than one query)
            assert abs(entry[key] - r[key]) <= one_query + 1e-6, (entry, r)
    exact = sum(all(abs(e[k] - brute[(e["alpha"], e["k"])][k]) < 1e-4 for k in KEYS) for e in result.grid)
    assert exact >= 108
    # The winner is brute force's best cell (ties: smaller alpha, then smaller k).
    best = max(brute.items(), key=lambda kv: (round(kv[1]["R@1"], 6), -kv[0][0], -kv[0][1]))
    assert (result.alpha, result.k) == best[0]
    assert result.score == pytest.approx(best[1]["R@1"], abs=1e-4)
    _, idx = search(hub_data.queries, hub_data.gallery, None, 10)
    assert result.baseline == pytest.approx(recall_from_topk(idx, truth)["R@1"], abs=1e-9)
    assert result.score > result.baseline + 10  # planted hubs: NNN helps a lot


@pytest.mark.parametrize("objective", ["R@5", "R@10"])
def test_other_objectives_pick_their_best(small, objective):
    truth = Truth.from_array(small.truth, len(small.queries), len(small.gallery))
    result = tune_grid(small.queries, small.gallery, small.reference, truth, [0.5, 1.0, 1.5], [4, 32], objective)
    values = [e[objective] for e in result.grid]
    assert result.score == max(values) and result.objective == objective
    assert result.baseline == result.baseline_metrics[objective]


def test_multi_positive_truth_uses_best_ranked_item(small):
    rng = np.random.default_rng(0)
    nq, ng = len(small.queries), len(small.gallery)
    extra_q = rng.integers(0, nq, 200)
    pairs = np.concatenate(
        [np.stack([np.arange(nq), small.truth], 1), np.stack([extra_q, rng.integers(0, ng, 200)], 1)]
    )
    pairs = pairs[(pairs[:, 0] % 7) != 0]  # some queries have no truth at all: not in the denominator
    truth = Truth.from_array(pairs, nq, ng)
    result = tune_grid(small.queries, small.gallery, small.reference, truth, [0.25, 1.0], [2, 64])
    tiny_blocks = tune_grid(small.queries, small.gallery, small.reference, truth, [0.25, 1.0], [2, 64], block_rows=7)
    assert tiny_blocks.grid == result.grid
    one_query = 100.0 / truth.has_truth().sum()
    for entry in result.grid:
        r = brute_force_recall(small.queries, small.gallery, small.reference, truth, entry["alpha"], entry["k"])
        for key in KEYS:
            assert abs(entry[key] - r[key]) <= one_query + 1e-6


def test_duplicate_items_tie_to_lower_index():
    """Exact score ties: the lower gallery index outranks; rank and top-1 agree with a sorted search."""
    d = make_hub_data(n_gallery=60, n_queries=200, n_reference=300, dim=8, seed=5)
    # small integers: every score is exact in float32 on any BLAS kernel, so twins tie exactly
    # (with real-valued data a kernel may round the same dot product differently at another column)
    d.gallery, d.queries, d.reference = (
        np.round(x * 8).astype(np.float32) for x in (d.gallery, d.queries, d.reference)
    )
    gallery = np.vstack([d.gallery, d.gallery[:20]])  # rows 60..79 duplicate rows 0..19
    truth_items = np.where(d.truth < 20, d.truth + 60, d.truth)  # truth is the higher-index twin
    truth = Truth.from_array(truth_items, len(d.queries), len(gallery))
    topk = reference_topk(gallery, d.reference, 16)
    biases = np.vstack([np.zeros((1, len(gallery)), np.float32), cell_biases(topk, [0.5, 1.0], [1, 16])])
    ranks = truth_ranks(d.queries, gallery, truth, biases)
    tops = top1_per_cell(d.queries, gallery, biases)
    for c, bias in enumerate(biases):
        scores = d.queries @ gallery.T - bias
        order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), scores.shape), -scores), axis=1)
        expected_rank = np.minimum(np.argmax(order == truth_items[:, None], axis=1), 10)
        assert np.array_equal(ranks[c], expected_rank)
        assert np.array_equal(tops[c], order[:, 0])
    assert (ranks[0][d.truth < 20] >= 1).all()  # the lower twin always comes first


def test_tie_between_cells_goes_to_smaller_alpha_then_smaller_k():
    assert pick_best(np.array([1.0, 3.0, 3.0, 2.0])) == 1
    # Reference orthogonal to every gallery item: all biases are 0, so every cell ties.
    eye = np.eye(8, dtype=np.float32)
    gallery, reference = eye[:4], np.repeat(eye[4:], 3, axis=0)
    queries = gallery + 0.01 * np.eye(4, 8, k=1, dtype=np.float32)
    truth = Truth.from_array(np.arange(4), 4, 4)
    result = tune_grid(queries, gallery, reference, truth, [1.5, 0.5, 1.0], [8, 2, 4])
    assert (result.alpha, result.k) == (0.5, 2)
    assert result.alphas == [0.5, 1.0, 1.5] and result.ks == [2, 4, 8]
    assert len({e["R@1"] for e in result.grid}) == 1


def test_k_larger_than_reference_is_skipped(small):
    truth = Truth.from_array(small.truth, len(small.queries), len(small.gallery))
    reference = small.reference[:100]
    result = tune_grid(small.queries, small.gallery, reference, truth, [0.75], PAPER_KS)
    assert result.ks == [1, 2, 4, 8, 16, 32, 64] and result.skipped_ks == [128, 256, 512]
    assert "k=128, 256, 512" in result.notes[0] and "100 rows" in result.notes[0]
    assert np.isnan(result.matrix()).sum() == 0 and result.matrix().shape == (1, 7)
    with pytest.raises(ParameterError, match="larger than the reference"):
        tune_grid(small.queries, small.gallery, reference, truth, [0.75], [128, 512])


@pytest.mark.parametrize(
    "alphas, ks, match",
    [
        ([], [1], "alpha grid is empty"),
        ([-0.5], [1], "alpha"),
        ([float("nan")], [1], "alpha"),
        ([0.5], [], "k grid is empty"),
        ([0.5], [0], "k must be"),
        ([0.5], [2.5], "k must be"),
    ],
)
def test_check_grid_rejects_bad_values(alphas, ks, match):
    with pytest.raises(ParameterError, match=match):
        check_grid(alphas, ks, 100)


def test_parse_list():
    assert parse_list("0.5, 1,1.5", "alpha") == [0.5, 1.0, 1.5]
    assert parse_list("1,2,4", "k") == [1, 2, 4]
    for text, kind in (("a,b", "alpha"), ("1.5", "k"), (" , ", "k")):
        with pytest.raises(ParameterError):
            parse_list(text, kind)


def test_deterministic(small):
    truth = Truth.from_array(small.truth, len(small.queries), len(small.gallery))
    a = tune_grid(small.queries, small.gallery, small.reference, truth, block_rows=64)
    b = tune_grid(small.queries, small.gallery, small.reference, truth, block_rows=4096)
    assert a.grid == b.grid and (a.alpha, a.k) == (b.alpha, b.k)


def test_unsupervised_lands_near_supervised_choice(hub_data):
    truth = Truth.from_array(hub_data.truth, len(hub_data.queries), len(hub_data.gallery))
    result = tune_unsupervised(hub_data.gallery, hub_data.reference, queries=hub_data.queries, truth=truth)
    assert result.mode == "unsupervised" and result.objective == "entropy"
    assert result.criterion["n_heldout_queries"] == 400 and result.criterion["n_bias_queries"] == 1600
    picked = result.cell(result.alpha, result.k)["R@1"]
    best = max(e["R@1"] for e in result.grid)
    base = result.baseline_metrics["R@1"]
    assert picked >= base + 0.8 * (best - base), (picked, best, base)
    assert result.score >= max(e["entropy"] for e in result.grid) - 0.001
    assert result.score > result.baseline  # retrievals spread more evenly than plain search
    again = tune_unsupervised(hub_data.gallery, hub_data.reference)
    assert (again.alpha, again.k) == (result.alpha, result.k)


def test_unsupervised_without_hubs_barely_moves():
    """Nothing to fix (no hubs, easy data): the guard keeps retrieval close to plain search."""
    d = make_hub_data(
        n_gallery=200, n_queries=400, n_reference=2000, dim=64, n_hubs=0, hub_strength=0.0, noise=0.2, seed=2
    )
    truth = Truth.from_array(d.truth, len(d.queries), len(d.gallery))
    result = tune_unsupervised(d.gallery, d.reference, queries=d.queries, truth=truth)
    assert result.cell(result.alpha, result.k)["R@1"] >= result.baseline_metrics["R@1"] - 1.0


def test_unsupervised_bad_holdout(small):
    with pytest.raises(ParameterError, match="holdout"):
        tune_unsupervised(small.gallery, small.reference, holdout=1.5)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli_tune_then_bias_and_eval_use_params(hub_files, tmp_path):
    p = hub_files
    params = tmp_path / "params.json"
    res = runner.invoke(
        app,
        [
            "tune",
            "-Q",
            str(p["queries"]),
            "-g",
            str(p["gallery"]),
            "-t",
            str(p["truth"]),
            "-r",
            str(p["reference"]),
            "-o",
            str(params),
            "--ks",
            "1,4,16,64,4096",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(params.read_text())
    for key in ("alpha", "k", "objective", "score", "baseline", "grid", "skipped_ks", "best"):
        assert key in doc
    assert doc["objective"] == "R@1" and doc["skipped_ks"] == [4096] and len(doc["grid"]) == 44
    assert "*" in res.output and "skipped k=4096" in res.output
    bias = tmp_path / "bias.h5"
    res = runner.invoke(
        app, ["bias", str(p["gallery"]), "-r", str(p["reference"]), "--params", str(params), "-o", str(bias)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "eval",
            "-Q",
            str(p["queries"]),
            "-g",
            str(p["gallery"]),
            "-t",
            str(p["truth"]),
            "-r",
            str(p["reference"]),
            "--params",
            str(params),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["params"] == {"alpha": doc["alpha"], "k": doc["k"]}
    assert ev["nnn"]["R@1"] == pytest.approx(doc["score"], abs=100 / 600 + 1e-6)
    assert ev["baseline"]["R@1"] == pytest.approx(doc["baseline"], abs=1e-6)


def test_cli_tune_json_and_unsupervised(hub_files, tmp_path):
    p = hub_files
    out = tmp_path / "u.json"
    res = runner.invoke(
        app,
        [
            "tune",
            "-g",
            str(p["gallery_npy"]),
            "-r",
            str(p["reference_npy"]),
            "-o",
            str(out),
            "--alphas",
            "0.5,1",
            "--ks",
            "8,64",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "unsupervised" and doc["objective"] == "entropy" and len(doc["grid"]) == 4
    assert json.loads(out.read_text())["alpha"] == doc["alpha"]
    res = runner.invoke(
        app,
        [
            "tune",
            "-g",
            str(p["gallery"]),
            "-r",
            str(p["reference"]),
            "-Q",
            str(p["queries"]),
            "-t",
            str(p["truth"]),
            "--unsupervised",
            "-o",
            str(out),
            "--alphas",
            "0.5,1",
            "--ks",
            "8,64",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "check against --truth" in res.output
    assert "R@1" in json.loads(out.read_text())["grid"][0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alphas", "0.5,abc"], "bad alpha"),
        (["--alphas", "-1"], "alpha"),
        (["--ks", "0,4"], "k must be"),
        (["--ks", "2.5"], "bad k"),
        (["--ks", "5000,9000"], "larger than the reference"),
        (["--objective", "R@3"], ""),
        (["--holdout", "1.5", "--unsupervised"], "holdout"),
    ],
)
def test_cli_bad_options_exit_2(hub_files, tmp_path, extra, message):
    p = hub_files
    out = tmp_path / "params.json"
    res = runner.invoke(
        app,
        [
            "tune",
            "-Q",
            str(p["queries"]),
            "-g",
            str(p["gallery"]),
            "-t",
            str(p["truth"]),
            "-r",
            str(p["reference"]),
            "-o",
            str(out),
            *extra,
        ],
    )
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_bad_inputs_exit_2(hub_files, tmp_path):
    p = hub_files
    out = tmp_path / "params.json"
    base = ["tune", "-g", str(p["gallery"]), "-r", str(p["reference"]), "-o", str(out)]
    cases = [
        (["-Q", str(p["queries"]), "-t", str(tmp_path / "missing.npy")], "no such file"),
        (["-t", str(p["truth"])], "--queries"),
        (["-Q", str(p["queries"])], "together"),
        (["-Q", str(p["queries"]), "-t", str(p["truth"]), "-o", str(tmp_path / "nodir" / "x.json")], "does not exist"),
    ]
    np.save(tmp_path / "short_truth.npy", np.arange(5))
    cases.append((["-Q", str(p["queries"]), "-t", str(tmp_path / "short_truth.npy")], "entries"))
    np.save(tmp_path / "wrong_dim.npy", np.ones((10, 3), np.float32))
    cases.append((["-Q", str(tmp_path / "wrong_dim.npy"), "-t", str(p["truth"])], "dimension"))
    for extra, message in cases:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.output, (extra, res.output)
        assert "Traceback" not in res.output
    assert not out.exists()
