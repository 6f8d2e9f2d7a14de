"""Incremental bias updates vs a full recompute: time and agreement.

    .venv/bin/python bench/bench_incremental.py [--n 20000 --m 50000 --new-m 2000 --new-n 1000 --dim 64 --k 64]

Prints a table and writes bench/results/incremental.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, reference_topk
from nnn_cli.data.biasfile import StoredBias
from nnn_cli.data.provenance import base_attrs, bias_provenance
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.scale.incremental import add_reference, append_items


def mem(arr):
    return EmbeddingSource(Path("-"), None, "mem", tuple(arr.shape), arr.dtype, "bench", _array=arr)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name, default in (("n", 20000), ("m", 50000), ("new-m", 2000), ("new-n", 1000), ("dim", 64), ("k", 64)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    g = rng.standard_normal((args.n + args.new_n, args.dim)).astype(np.float32)
    r = rng.standard_normal((args.m + args.new_m, args.dim)).astype(np.float32)
    g_old, g_new, r_old, r_new = g[: args.n], g[args.n :], r[: args.m], r[args.m :]
    alpha, k = 0.75, args.k

    def full(gal, ref):
        topk = reference_topk(mem(gal).read("cosine"), mem(ref).read("cosine"), k)
        return bias_from_topk(topk, alpha, k), topk

    (b_old, t_old), t_full_old = timed(lambda: full(g_old, r_old))
    attrs = {**base_attrs("bias", alpha=alpha, k=k, metric="cosine"), **bias_provenance(mem(g_old), mem(r_old))}
    stored = StoredBias(Path("bench.h5"), b_old, t_old, None, attrs)
    (b_ref, *_), t_ref_add = timed(lambda: add_reference(stored, mem(g_old), mem(r_new), "cosine"))
    (b_ref_full, _), t_ref_full = timed(lambda: full(g_old, r))
    (b_app, *_), t_append = timed(lambda: append_items(stored, mem(g_new), mem(r_old), "cosine"))
    (b_app_full, _), t_app_full = timed(lambda: full(g, r_old))
    rows = [
        (
            "reference-add",
            f"{args.n} x {args.new_m} new queries",
            t_ref_add,
            t_ref_full,
            float(np.abs(b_ref - b_ref_full).max()),
        ),
        ("append", f"{args.new_n} new items x {args.m}", t_append, t_app_full, float(np.abs(b_app - b_app_full).max())),
    ]
    print(f"{'operation':<15}{'work':<28}{'incremental s':>14}{'full s':>9}{'speed-up':>10}{'max |diff|':>12}")
    for op, work, ti, tf, diff in rows:
        print(f"{op:<15}{work:<28}{ti:>14.3f}{tf:>9.3f}{tf / ti:>9.1f}x{diff:>12.2e}")
    out = Path(__file__).parent / "results" / "incremental.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": [
                    dict(zip(("operation", "work", "incremental_s", "full_s", "max_abs_diff"), row)) for row in rows
                ],
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
