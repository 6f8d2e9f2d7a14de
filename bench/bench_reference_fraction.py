"""The reference-size ablation on sample_data, presented as the NNN paper's Tables A12-A15.

For each share of the reference queries (``--reference-fraction``: 100%, 50%, 20%, 10%; a seeded
random subset, several seeds) NNN is tuned on the held-out split with that share and evaluated on the
test split with the same share, which is what ``nnn tune --reference-fraction F --seed S`` followed by
``nnn bias --params`` (the params apply their share) and ``nnn eval --bias`` do.

    .venv/bin/python bench/bench_reference_fraction.py [--fractions 1,0.5,0.2,0.1] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnn_cli.core.metrics import recall_from_topk
from nnn_cli.core.nnn import compute_bias
from nnn_cli.core.protocol import reference_subsample
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.truth import Truth
from nnn_cli.core.tune import tune_grid
from nnn_cli.data.inputs import open_embeddings

D = ROOT / "sample_data"


def load(name):
    return open_embeddings(str(D / f"{name}.h5"), name).read("cosine")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="1,0.5,0.2,0.1")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per fraction (mean and range reported)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tq, tg, ref = load("tune_queries"), load("tune_gallery"), load("reference")
    q, g = load("queries"), load("gallery")
    tt = Truth.from_array(np.load(D / "tune_truth.npy"), len(tq), len(tg))
    t = Truth.from_array(np.load(D / "truth.npy"), len(q), len(g))
    base = recall_from_topk(DebiasedIndex(g).search(q, 10)[1], t)["R@1"]
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        seeds = [0] if fraction >= 1 else list(range(args.seeds))
        r1s, cells = [], []
        for seed in seeds:
            r = ref[reference_subsample(len(ref), fraction, seed)]
            best = tune_grid(tq, tg, r, tt, progress=None)
            bias = compute_bias(g, r, best.alpha, best.k)
            r1s.append(recall_from_topk(DebiasedIndex(g, bias).search(q, 10)[1], t)["R@1"])
            cells.append([best.alpha, best.k])
        rows.append({"fraction": fraction, "n_reference": int(round(fraction * len(ref))), "baseline_R@1": base,
                     "nnn_R@1": round(float(np.mean(r1s)), 2), "min": min(r1s), "max": max(r1s),
                     "seeds": seeds, "tuned": cells})  # fmt: skip
    if args.json:
        print(json.dumps(rows))
        return
    print("sample_data, test R@1 (%), NNN tuned and applied with a share of the 6,000 reference queries")
    head = ["Original"] + [("NNN (full)" if r["fraction"] >= 1 else f"NNN ({r['fraction']:.0%})") for r in rows]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    print("| " + " | ".join([f"{base:.2f}"] + [f"{r['nnn_R@1']:.2f}" for r in rows]) + " |")
    print(
        "| "
        + " | ".join(["seeds: range"] + [f"{r['min']:.1f}-{r['max']:.1f} ({len(r['seeds'])})" for r in rows])
        + " |"
    )


if __name__ == "__main__":
    main()
