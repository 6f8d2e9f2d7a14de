"""One pipeline, two ways to run the exact bias on this machine, side by side in one run:

* in memory: ``nnn bias ... -o b.h5`` (the multi-threaded in-memory engine, one block);
* blocked on local threads: ``nnn bias ... -o run/`` (the pipeline Ray uses: blocks x partitions, one
  single-threaded task per tile range on a thread pool, a run folder with checksums and content hashes).

Both give the same bytes (checked here); the table shows what the blocked pipeline costs on one machine
(its fingerprint pass and block files included).

    .venv/bin/python bench/bench_pipeline.py [--n 16384 --m 65536 --d 128 --k 16 --repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnn_cli import jobs  # noqa: E402
from nnn_cli.data.manifest import read_manifest_bias  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--m", type=int, default=65536)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nnn-bench-"))
    rng = np.random.default_rng(0)
    np.save(tmp / "g.npy", rng.standard_normal((a.n, a.d)).astype(np.float32))
    np.save(tmp / "r.npy", rng.standard_normal((a.m, a.d)).astype(np.float32))
    times: dict[str, list[float]] = {"in memory (-o b.h5)": [], "blocked, local threads (-o run/)": []}
    try:
        for _ in range(a.repeat):
            for name, out in zip(times, ("b.h5", "run")):
                shutil.rmtree(tmp / "run", ignore_errors=True)
                t0 = time.perf_counter()
                jobs.bias(tmp / "g.npy", reference=tmp / "r.npy", output=tmp / out, alpha=0.75, k=a.k)
                times[name].append(time.perf_counter() - t0)
        import h5py

        with h5py.File(tmp / "b.h5") as f:
            same = np.array_equal(f["bias"][()], read_manifest_bias(tmp / "run").bias)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = min(times["in memory (-o b.h5)"])
    print(f"N={a.n} M={a.m} d={a.d} k={a.k}, best of {a.repeat}; identical bytes: {same}")
    print(f"{'way':36s} {'seconds':>9s} {'ratio':>7s}")
    for name, ts in times.items():
        print(f"{name:36s} {min(ts):9.3f} {min(ts) / base:7.2f}")


if __name__ == "__main__":
    main()
