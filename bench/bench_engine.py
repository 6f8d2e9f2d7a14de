"""Benchmark: exact bias with ``--engine ray`` (a private 2-worker local Ray) against ``--engine local``.

Same synthetic inputs (unit-normalised Gaussian rows, float32 ``.npy`` shards of 50k rows in a temp
folder), same machine, one after the other:

  local   open_embeddings(folder).read("cosine") x 2, then compute_bias (2 threads, 1024 x 8192 tiles)
  ray     ray_bias(folder, folder, ...) with address=None: starts a private Ray (num_cpus=2) on
          127.0.0.1, runs gallery blocks x reference partitions, writes the manifest folder, stops Ray;
          the result is read back and checked byte-identical to local

Prints the measured table (seconds, overhead % with and without Ray start-up, per-task figures)
and a projection for 1e8 x 1e8 and 1e9 x 1e9 at d=768: FLOP, bytes read, tasks, GPU-hours, all
*projected* from the formulas below and the assumed GPU rate, next to what one task measured here.

    .venv/bin/python bench/bench_engine.py --quick     # 50k x 50k, d=256 (about a minute)
    .venv/bin/python bench/bench_engine.py             # the issue's 200k x 200k, d=512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnn_cli.core.nnn import compute_bias
from nnn_cli.data.inputs import open_embeddings

GPU_TFLOPS = 25.0  # assumed sustained fp32 GEMM per GPU (about half an H100 SXM's 67 TFLOP/s fp32 peak)
GPU_PRICE = 2.50  # assumed $ per GPU-hour (on-demand cloud order of magnitude)
SCALE_BLOCK = 1 << 20  # projected plan: 1,048,576 gallery rows per task (3.2 GB fp32 at d=768 on the GPU)
SCALE_PARTITION = 1 << 24  # 16,777,216 reference rows streamed per task


def write_shards(folder: Path, n: int, d: int, seed: int, shard: int = 50_000) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, s in enumerate(range(0, n, shard)):
        x = rng.standard_normal((min(shard, n - s), d), dtype=np.float32)
        np.save(folder / f"{i}.npy", x)


def balanced_block_rows(n: int, workers: int) -> int:
    """Gallery rows per task (a multiple of 1024, 2 to 8 blocks per worker) that minimise the makespan
    proxy ``rounds x block_rows``: 9 equal tasks on 2 workers would leave one worker idle for a whole task."""
    best = None
    for rows in range(1024, max(1024, n // (2 * workers)) + 1, 1024):
        blocks = -(-n // rows)
        if not 2 * workers <= blocks <= 8 * workers:
            continue
        span = -(-blocks // workers) * rows
        if best is None or span < best[0]:
            best = (span, rows)
    return best[1] if best else 1024


def projection(n: float, m: float, d: int, k: int) -> dict:
    blocks, parts = -(-n // SCALE_BLOCK), -(-m // SCALE_PARTITION)
    flop = 2.0 * n * m * d
    bytes_read = 4.0 * d * (n * parts + m * blocks)  # each block read once per partition, each partition once per block
    gpu_hours = flop / (GPU_TFLOPS * 1e12) / 3600
    return {
        "N": n,
        "M": m,
        "d": d,
        "k": k,
        "flop": flop,
        "bytes_read": bytes_read,
        "tasks": int(blocks * parts),
        "blocks": int(blocks),
        "partitions": int(parts),
        "gpu_hours": gpu_hours,
        "usd": gpu_hours * GPU_PRICE,
        "task_gpu_seconds": flop / (blocks * parts) / (GPU_TFLOPS * 1e12),
        "task_bytes": bytes_read / (blocks * parts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50k x 50k, d=256")
    ap.add_argument("--n", type=int)
    ap.add_argument("--m", type=int)
    ap.add_argument("--d", type=int)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block-rows", type=int, help="gallery rows per task (multiple of 1024)")
    ap.add_argument("--partition-rows", type=int, help="reference rows per task (multiple of 8192)")
    ap.add_argument(
        "--index",
        default="flat",
        help="flat (exact, default) or ivf: the approximate bias, index built "
        "once (locally: by the job; ray: on the driver, shipped to tasks)",
    )
    ap.add_argument("--nlist", type=int, help="IVF lists (default about sqrt(M))")
    ap.add_argument("--nprobe", type=int, default=4, help="IVF lists probed (fixed, so both engines do the same work)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    n = args.n or (50_000 if args.quick else 200_000)
    m = args.m or n
    d = args.d or (256 if args.quick else 512)
    block_rows = args.block_rows or balanced_block_rows(n, args.workers)
    if args.index != "flat":
        block_rows = -(-block_rows // 4096) * 4096  # the IVF list-major scan's row grid
    partition_rows = args.partition_rows or -(-m // 8192) * 8192

    tmp = Path(tempfile.mkdtemp(prefix="nnn-bench-engine-"))
    try:
        write_shards(tmp / "gallery", n, d, 1)
        write_shards(tmp / "reference", m, d, 2)

        index = None
        t0 = time.perf_counter()
        if args.index == "flat":
            g = open_embeddings(tmp / "gallery").read("cosine")
            r = open_embeddings(tmp / "reference").read("cosine")
            t_read = time.perf_counter() - t0
            bias_local = compute_bias(g, r, args.alpha, args.k)
            del g, r
        else:  # the whole local job: read, build, sample recall, search every row, write
            from nnn_cli import jobs
            from nnn_cli.data.biasfile import read_bias

            index = {"index": args.index, "nlist": args.nlist, "nprobe": args.nprobe}
            jobs.bias(
                tmp / "gallery",
                reference=tmp / "reference",
                output=tmp / "local.h5",
                alpha=args.alpha,
                k=args.k,
                index=jobs.IndexOptions(args.index, args.nlist, args.nprobe),
                store_topk=False,
            )
            t_read = float("nan")
            bias_local = read_bias(tmp / "local.h5").bias
        t_local = time.perf_counter() - t0

        from nnn_cli.scale.ray import ray_bias, read_manifest_bias

        t0 = time.perf_counter()
        s = ray_bias(
            tmp / "gallery",
            tmp / "reference",
            args.alpha,
            args.k,
            "cosine",
            str(tmp / "out"),
            num_cpus=args.workers,
            block_rows=block_rows,
            partition_rows=partition_rows,
            save_topk=False,
            index=index,
        )
        t_ray = time.perf_counter() - t0
        identical = bool(np.array_equal(read_manifest_bias(str(tmp / "out")).bias, bias_local))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sec = s["seconds"]
    t_ray_nostart = t_ray - sec["ray_start"]
    task_s = np.array(s["task_seconds"])
    task_flop = np.array(s["task_flop"])
    task_bytes = np.array(s["task_bytes_read"])
    core_gflops = float(task_flop.sum() / max(task_s.sum(), 1e-9) / 1e9)
    sched = sec["compute"] * args.workers - task_s.sum() - sum(s["merge_seconds"])
    measured = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "N": n,
        "M": m,
        "d": d,
        "k": args.k,
        "workers": args.workers,
        "plan": s["plan"],
        "byte_identical": identical,
        "local_seconds": t_local,
        "local_read_seconds": t_read,
        "ray_seconds": t_ray,
        "ray_start_seconds": sec["ray_start"],
        "ray_seconds_without_start": t_ray_nostart,
        "overhead_pct": 100 * (t_ray / t_local - 1),
        "overhead_pct_without_start": 100 * (t_ray_nostart / t_local - 1),
        "task_seconds_mean": float(task_s.mean()),
        "task_bytes_mean": float(task_bytes.mean()),
        "task_flop_mean": float(task_flop.mean()),
        "core_gflops": core_gflops,
        "idle_core_seconds_per_task": float(sched / len(task_s)),
    }
    proj = [projection(1e8, 1e8, 768, args.k), projection(1e9, 1e9, 768, args.k)]

    what = "exact bias" if args.index == "flat" else f"{args.index} bias (nprobe {args.nprobe})"
    print(
        f"\nMEASURED on this machine ({measured['machine']}), {what} {n:,} x {m:,}, d={d}, k={args.k}, "
        f"{args.workers} workers; ray plan {s['plan']['blocks']} blocks x {s['plan']['partitions']} partitions "
        f"= {s['plan']['tasks']} tasks; byte-identical to local: {identical}"
    )
    print(f"{'engine':<28}{'seconds':>10}{'overhead':>10}")
    print(f"{'local (read + bias)':<28}{t_local:>10.2f}{'':>10}")
    print(f"{'ray, incl. Ray start-up':<28}{t_ray:>10.2f}{measured['overhead_pct']:>9.1f}%")
    print(f"{'ray, excl. Ray start-up':<28}{t_ray_nostart:>10.2f}{measured['overhead_pct_without_start']:>9.1f}%")
    print(
        f"  Ray start-up {sec['ray_start']:.2f} s, plan+fingerprints {sec['plan']:.2f} s; per task: "
        f"{task_s.mean():.2f} s, {task_flop.mean() / 1e9:.1f} GFLOP, {task_bytes.mean() / 1e6:.1f} MB read; "
        f"{core_gflops:.1f} GFLOP/s per core (single-threaded BLAS); idle core-seconds per task "
        f"{measured['idle_core_seconds_per_task']:.3f}"
    )
    if args.index != "flat":  # the projection is for the exact join; an index's cost depends on nprobe and data
        proj = []
    else:
        print(
            f"\nPROJECTED (not measured): d=768, k={args.k}, plan {SCALE_BLOCK:,} gallery rows x {SCALE_PARTITION:,} "
            f"reference rows per task; GPU at an assumed {GPU_TFLOPS:g} TFLOP/s sustained fp32, ${GPU_PRICE:.2f}/GPU-hour"
        )
        print(
            f"{'N x M':<14}{'FLOP':>10}{'bytes read':>12}{'tasks':>9}{'GPU-h':>10}{'USD':>11}{'s/task GPU':>11}"
            f"{'core-h (this CPU)':>19}"
        )
        for p in proj:
            core_h = p["flop"] / (core_gflops * 1e9) / 3600
            print(
                f"{p['N']:.0e} x {p['M']:.0e}".ljust(14) + f"{p['flop']:>10.2e}{p['bytes_read']:>12.2e}{p['tasks']:>9,}"
                f"{p['gpu_hours']:>10,.0f}{p['usd']:>11,.0f}{p['task_gpu_seconds']:>11.0f}{core_h:>19,.0f}"
            )
        print(
            "  bytes read = 4 d (N x partitions + M x blocks); the per-task scheduling cost measured above "
            f"({measured['idle_core_seconds_per_task']:.3f} core-s) is negligible next to a projected GPU task."
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "measured": measured,
                    "projected": proj,
                    "assumptions": {
                        "gpu_tflops": GPU_TFLOPS,
                        "usd_per_gpu_hour": GPU_PRICE,
                        "block_rows": SCALE_BLOCK,
                        "partition_rows": SCALE_PARTITION,
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
