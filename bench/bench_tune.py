"""Benchmark: the full alpha x k grid of `nnn tune` against one plain `nnn eval` at fixed alpha, k.

Both run in one process on the same synthetic planted-hub data (default: a
COCO-sized split, 5,000 gallery, 25,000 queries, 100,000 reference, d=512).
"One eval" is what ``nnn eval --reference R --alpha A --k K`` computes: the
bias at that k, then a baseline and a debiased ranking of every query.
Peak memory is the highest resident set size (sampled every 5 ms) above the
level before each phase.  Prints a table; writes JSON to bench/results/.

    .venv/bin/python bench/bench_tune.py                 # full size
    .venv/bin/python bench/bench_tune.py --scale 0.1     # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnn_cli.core.evaluate import evaluate_index  # noqa: E402
from nnn_cli.core.nnn import compute_bias  # noqa: E402
from nnn_cli.core.synthetic import make_hub_data  # noqa: E402
from nnn_cli.core.truth import Truth
from nnn_cli.core.tune import tune_grid  # noqa: E402
from nnn_cli.scale.device import set_threads  # noqa: E402


class PeakRSS:
    """Context manager: the peak resident memory above the level at entry, in MiB."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mib = (self.peak - self.start) / 2**20


def one_eval(data, truth, alpha, k):
    """Bias at (alpha, k) + baseline and NNN rankings scored: `nnn eval --reference`."""
    bias = compute_bias(data.gallery, data.reference, alpha, k)
    base = evaluate_index(data.queries, data.gallery, truth, None)
    nnn = evaluate_index(data.queries, data.gallery, truth, bias)
    return base, nnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=25000)
    ap.add_argument("--reference", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the three sizes")
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.5, help="query noise of make_hub_data (higher: harder)")
    ap.add_argument("--hub-strength", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bench_tune.json")
    args = ap.parse_args()
    set_threads(args.threads)
    sizes = {name: max(1, int(getattr(args, name) * args.scale)) for name in ("gallery", "queries", "reference")}

    t0 = time.perf_counter()
    data = make_hub_data(
        n_gallery=sizes["gallery"],
        n_queries=sizes["queries"],
        n_reference=sizes["reference"],
        dim=args.dim,
        n_hubs=max(1, sizes["gallery"] // 100),
        noise=args.noise,
        hub_strength=args.hub_strength,
        seed=args.seed,
    )
    truth = Truth.from_array(data.truth, len(data.queries), len(data.gallery))
    make_s = time.perf_counter() - t0

    with PeakRSS() as eval_mem:
        t0 = time.perf_counter()
        base, nnn = one_eval(data, truth, args.alpha, args.k)
        eval_s = time.perf_counter() - t0
    with PeakRSS() as grid_mem:
        t0 = time.perf_counter()
        result = tune_grid(data.queries, data.gallery, data.reference, truth)
        grid_s = time.perf_counter() - t0

    cell = result.cell(args.alpha, args.k)
    agree = all(abs(cell[key] - nnn.recall[key]) < 0.05 for key in ("R@1", "R@5", "R@10"))
    report = {
        "sizes": {**sizes, "dim": args.dim},
        "noise": args.noise,
        "hub_strength": args.hub_strength,
        "n_cells": len(result.grid),
        "make_data_s": round(make_s, 2),
        "one_eval_s": round(eval_s, 2),
        "grid_s": round(grid_s, 2),
        "ratio": round(grid_s / eval_s, 2),
        "one_eval_peak_mib": round(eval_mem.mib, 1),
        "grid_peak_mib": round(grid_mem.mib, 1),
        "process_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "eval_at": {"alpha": args.alpha, "k": args.k, "baseline": base.recall, "nnn": nnn.recall},
        "grid_cell_at_same_alpha_k": {key: cell[key] for key in ("R@1", "R@5", "R@10")},
        "grid_matches_eval": agree,
        "tuned": {"alpha": result.alpha, "k": result.k, "R@1": result.score, "baseline_R@1": result.baseline},
        "cpus": psutil.cpu_count(),
        "threads": args.threads or "all",
        "load_avg_at_end": [round(x, 2) for x in psutil.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(f"{'phase':<34}{'seconds':>10}{'peak MiB':>12}")
    print(f"{'one eval (bias + base + NNN)':<34}{eval_s:>10.2f}{eval_mem.mib:>12.1f}")
    print(f"{f'tune grid ({len(result.grid)} cells + baseline)':<34}{grid_s:>10.2f}{grid_mem.mib:>12.1f}")
    print(
        f"grid / one eval = {grid_s / eval_s:.2f}x (target <= 3x); grid cell at alpha={args.alpha}, k={args.k} "
        f"{'matches' if agree else 'DIFFERS FROM'} the eval; best alpha={result.alpha}, k={result.k}: "
        f"R@1 {result.score:.2f} vs baseline {result.baseline:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
