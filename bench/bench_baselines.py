"""NNN beside DN, QBNorm and DBNorm (DualIS, DualDIS): Recall@1 and seconds per method.

Each method's hyperparameters are tuned on a held-out split (NNN: the paper's
alpha x k grid; the others: ``nnn_cli.core.baselines.DEFAULT_GRIDS``), then every
method is run once on the test split and timed end to end (its per-gallery
precomputation + the search of all test queries).

    .venv/bin/python bench/bench_baselines.py                   # synthetic + sample_data
    .venv/bin/python bench/bench_baselines.py --scale 0.2       # smaller synthetic
    .venv/bin/python bench/bench_baselines.py --json out.json

Prints one table per data set and writes JSON (default bench/results/baselines.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnn_cli.core.baseline_sweep import tune_baseline
from nnn_cli.core.baselines import BaselineParams
from nnn_cli.core.compare import compare_methods
from nnn_cli.core.synthetic import make_hub_data
from nnn_cli.core.truth import Truth
from nnn_cli.core.tune import tune_grid
from nnn_cli.data.inputs import open_embeddings

METHODS = ["baseline", "nnn", "dn", "qbnorm", "dbnorm", "dbnorm_dis"]
ROOT = Path(__file__).resolve().parents[1]


def run(name, tune_q, tune_g, tune_truth, test_q, test_g, test_truth, reference, bank_tune=None, bank_test=None):
    t0 = time.perf_counter()
    nnn = tune_grid(tune_q, tune_g, reference, tune_truth)
    best = {}
    for method, _key in (("dn", None), ("qbnorm", None), ("dbnorm", None)):
        best.update(tune_baseline(method, tune_q, tune_g, tune_truth, reference, gallery_bank=bank_tune)["best"])
    params = BaselineParams(**best)
    tune_seconds = time.perf_counter() - t0
    runs = compare_methods(
        test_q,
        test_g,
        test_truth,
        METHODS,
        reference=reference,
        nnn_alpha=nnn.alpha,
        nnn_k=nnn.k,
        params=params,
        gallery_bank=bank_test,
        bootstrap=1000,
        seed=0,
    )
    rows = {}
    for m, r in runs.items():
        d = r.result.to_dict()
        rows[m] = {
            "R@1": round(d["R@1"], 2),
            "R@1_ci": d["R@1_ci"],
            "R@10": round(d["R@10"], 2),
            "seconds": d["seconds"],
            "hub_max": d["hubness"]["max"],
            "params": d.get("params") or {},
        }
    print(
        f"\n{name}: {len(test_q)} test queries, {len(test_g)} gallery, {len(reference)} reference, "
        f"d={test_g.shape[1]} (tuning took {tune_seconds:.1f}s)"
    )
    print(f"{'method':<12}{'R@1':>8}{'95% CI':>18}{'R@10':>8}{'hub max':>9}{'seconds':>10}  params")
    for m, row in rows.items():
        ci = f"[{row['R@1_ci'][0]:.1f}, {row['R@1_ci'][1]:.1f}]"
        print(
            f"{m:<12}{row['R@1']:>8.2f}{ci:>18}{row['R@10']:>8.2f}{row['hub_max']:>9}{row['seconds']:>10.3f}  "
            + ", ".join(f"{k}={v:g}" for k, v in row["params"].items())
        )
    return {
        "n_queries": len(test_q),
        "n_gallery": len(test_g),
        "n_reference": len(reference),
        "dim": int(test_g.shape[1]),
        "tune_seconds": round(tune_seconds, 2),
        "methods": rows,
    }


def synthetic(scale: float):
    n_g, n_q, n_r = int(5000 * scale), int(5000 * scale), int(25000 * scale)
    data = make_hub_data(n_gallery=n_g, n_queries=2 * n_q, n_reference=n_r, dim=128, n_hubs=max(5, n_g // 50), seed=0)
    half = n_q
    tune_truth = Truth.from_array(data.truth[:half], half, n_g)
    test_truth = Truth.from_array(data.truth[half:], n_q, n_g)
    return run(
        "synthetic planted hubs",
        data.queries[:half],
        data.gallery,
        tune_truth,
        data.queries[half:],
        data.gallery,
        test_truth,
        data.reference,
    )


def sample_data():
    d = ROOT / "sample_data"
    load = lambda f: open_embeddings(d / f).read("cosine")  # noqa: E731
    tq, tg, q, g, ref = (
        load(f) for f in ("tune_queries.h5", "tune_gallery.h5", "queries.h5", "gallery.h5", "reference.h5")
    )
    tt = Truth.from_array(np.load(d / "tune_truth.npy"), len(tq), len(tg))
    tr = Truth.from_array(np.load(d / "truth.npy"), len(q), len(g))
    # gallery-side bank: the other split's gallery (disjoint, same kind), like the paper's training images
    return run("sample_data (MiniLM, Debian descriptions)", tq, tg, tt, q, g, tr, ref, bank_tune=g, bank_test=tg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="synthetic size factor (1.0: 5k gallery, 25k reference)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "baselines.json"))
    ap.add_argument("--skip-sample", action="store_true")
    args = ap.parse_args()
    out = {"machine": f"{os.cpu_count()} CPUs (shared)", "synthetic": synthetic(args.scale)}
    if not args.skip_sample and (ROOT / "sample_data" / "gallery.h5").exists():
        out["sample_data"] = sample_data()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
