"""Benchmark: nnn at scale against the authors' nnn-retrieval, on the same synthetic inputs in one run.

Clustered unit vectors, d=512.  Every timed job runs in its own subprocess
(``--worker``), so a crash (nnn-retrieval's FaissCPURetriever on
faiss-cpu >= 1.13) is recorded as "crashed" and peak memory is per job.

Sections:
  gemm      this machine's sustained fp32 GEMM rate (numpy BLAS), the yardstick
  topk      exact top-k engines for the bias step: faiss IndexFlatIP.search, faiss.knn, GEMM+np.partition
  bias      bias step, N gallery x M reference, k=16 and 128: ours vs NNNRanker(NNNRetriever) (torch)
            and NNNRanker(FaissCPURetriever); also both as whole processes (`nnn bias` CLI vs a script)
  search    debiased search of Q queries: ours (faiss flat over [r, b]) vs NNNRanker.search
  ann       reference-side indexes (IVF, HNSW tuned to --recall): build/search time, top-k recall, bias error
  ann_scale N x N bias with `--index auto --recall 0.95` (cold, build included) vs exact extrapolated
            from a measured 2,000-row slice
  gallery   gallery-side index over [r, b] vs plain vectors + re-ranking: recall of debiased top-k and
            time against plain faiss search on the same kind of index
  budget    a large HDF5 reference under --memory-budget: peak RSS
  kernels   exact `nnn bias` N=5k x M=118k, k=128, as whole processes, under each OpenBLAS kernel this CPU
            supports (OPENBLAS_CORETYPE): its fraction of the sgemm rate measured under that kernel, and
            nnn-retrieval's whole process time over ours; interleaved repeats, best of each

    .venv/bin/python bench/bench_scale.py --quick   # CI-size check (about a minute)
    .venv/bin/python bench/bench_scale.py           # medium (the issue's N=5k, M=25k/118k)
    .venv/bin/python bench/bench_scale.py --full    # adds M=590k, 1M x 1M auto index, 3 GB budget run
    .venv/bin/python bench/bench_scale.py --full --only ann_scale   # one section

Prints one table of ratios (ours / theirs; below 1 means ours is faster or smaller) and
writes everything to bench/results/bench_scale_<mode>.json.  On a shared machine the absolute
times are pessimistic; the ratios come from the same run on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("NNN_BENCH_CODE") or str(ROOT))  # NNN_BENCH_CODE: --ann-baseline's tree
PY = sys.executable
DIM = 512

SECTIONS = ("gemm", "topk", "bias", "whole", "ann", "search", "gallery", "ann_scale", "budget", "kernels")

SIZES = {
    "quick": dict(
        n=1000,
        ms=[5000, 20000],
        ks=[16, 128],
        q=2000,
        ann_m=20000,
        scale_n=20000,
        gallery_n=20000,
        budget_rows=150_000,
        budget="300MB",
        budget_g=512,
        hnsw=True,
    ),
    "medium": dict(
        n=5000,
        ms=[25000, 118000],
        ks=[16, 128],
        q=25000,
        ann_m=118000,
        scale_n=60000,
        gallery_n=50000,
        budget_rows=400_000,
        budget="512MB",
        budget_g=1024,
        hnsw=True,
    ),
    "full": dict(
        n=5000,
        ms=[25000, 118000, 590000],
        ks=[16, 128],
        q=25000,
        ann_m=118000,
        scale_n=1_000_000,
        gallery_n=50000,
        budget_rows=1_500_000,
        budget="1GB",
        budget_g=1024,
        hnsw=True,
    ),
}


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def clustered(n: int, seed: int, n_clusters: int = 200, block: int = 100_000, centres_seed: int = 7) -> np.ndarray:
    """(n, 512) float32 unit rows around shared cluster centres (the same centres for every set)."""
    centres = np.random.default_rng(centres_seed).standard_normal((n_clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        x = centres[rng.integers(0, n_clusters, e - s)] + 1.2 * rng.standard_normal((e - s, DIM)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def maxrss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the forking parent's peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# worker jobs (each in its own process)
# ---------------------------------------------------------------------------
def job_ours_bias(a: dict) -> dict:
    from nnn_cli.core.nnn import bias_from_topk, reference_topk

    base = maxrss_mb()
    g, r = np.load(a["g"]), np.load(a["r"])
    gemm = gemm_rate(1.5)  # this process, just before: the fraction is robust to the machine's load
    t = time.perf_counter()
    b = bias_from_topk(reference_topk(g, r, a["k"]), 1.0, a["k"])
    sec = time.perf_counter() - t
    np.save(a["out"], b)
    return {
        "seconds": sec,
        "base_rss_mb": base,
        "gemm_gflops_here": round(gemm, 1),
        "gemm_fraction": round(2.0 * len(g) * len(r) * DIM / sec / 1e9 / gemm, 3),
    }


def job_theirs_bias(a: dict) -> dict:
    import torch
    from nnn import NNNRanker, NNNRetriever
    from nnn.faiss_cpu_retriever import FaissCPURetriever

    base = maxrss_mb()
    g, r = np.load(a["g"]), np.load(a["r"])
    retriever = NNNRetriever(DIM) if a["backend"] == "torch" else FaissCPURetriever(DIM)
    t = time.perf_counter()
    ranker = NNNRanker(retriever, g, r, alternate_ks=a["k"], batch_size=128, alternate_weight=1.0)
    sec = time.perf_counter() - t
    np.save(a["out"], np.asarray(ranker.alignment_means).reshape(-1).astype(np.float32))
    del torch
    return {"seconds": sec, "base_rss_mb": base}


def job_ours_search(a: dict) -> dict:
    from nnn_cli.core.search import DebiasedIndex

    g, q, b = np.load(a["g"]), np.load(a["q"]), np.load(a["b"])
    t = time.perf_counter()
    _, idx = DebiasedIndex(g, b).search(q, a["k"])
    sec = time.perf_counter() - t
    np.save(a["out"], idx)
    return {"seconds": sec}


def job_theirs_search(a: dict) -> dict:
    from nnn import NNNRanker, NNNRetriever

    g, q, r = np.load(a["g"]), np.load(a["q"]), np.load(a["r"])
    ranker = NNNRanker(NNNRetriever(DIM), g, r, alternate_ks=a["kb"], batch_size=128, alternate_weight=1.0)
    t = time.perf_counter()
    _, idx = ranker.search(q, a["k"])
    sec = time.perf_counter() - t
    np.save(a["out"], idx)
    return {"seconds": sec}


def job_cli(a: dict) -> dict:
    """Run the `nnn` CLI in this process (a whole process: imports, reading, computing, writing)."""
    from nnn_cli.cli.application import app

    t = time.perf_counter()
    code = app(a["argv"], standalone_mode=False)
    if code:
        raise SystemExit(f"nnn exited with {code}")
    return {"seconds": time.perf_counter() - t}


def job_gemm(a: dict) -> dict:
    """This process's sustained sgemm rate (under whatever OPENBLAS_CORETYPE it was started with)."""
    from threadpoolctl import threadpool_info

    arch = next((i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"), None)
    return {"gflops": gemm_rate(a.get("seconds", 3.0)), "openblas_kernel": arch}


JOBS = {
    "gemm": job_gemm,
    "ours_bias": job_ours_bias,
    "theirs_bias": job_theirs_bias,
    "ours_search": job_ours_search,
    "theirs_search": job_theirs_search,
    "cli": job_cli,
}


def worker(spec: str) -> None:
    args = json.loads(spec)
    out = JOBS[args["job"]](args)
    out["peak_rss_mb"] = maxrss_mb()
    sys.stdout.write("@@RESULT " + json.dumps(out) + "\n")


def run_job(job: str, timeout: float = 900, threads: int = 0, env_extra: dict | None = None, **kw) -> dict:
    """Run one job in a fresh interpreter; wall time from outside (a whole process)."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore", **(env_extra or {}))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            [PY, __file__, "--worker", json.dumps({"job": job, **kw})],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_seconds": timeout}
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # the whole process, every thread
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return {"status": "ok", "wall_seconds": wall, "cpu_seconds": round(cpu, 2), **json.loads(line[9:])}
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
    status = "crashed" if proc.returncode < 0 or "Segmentation" in proc.stderr or "Abort" in proc.stderr else "failed"
    return {"status": status, "returncode": proc.returncode, "error": tail, "wall_seconds": wall}


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------
def compile_code(tree: str | Path) -> None:
    """Write the bytecode of ``tree``'s nnn_cli, as an install does: a timed whole process then starts from
    .pyc like a user's.  Where PYTHONDONTWRITEBYTECODE is set (this machine sets it), a tree nobody compiled
    is compiled again at every start: measured here, a tiny `nnn bias` of a fresh worktree took 0.49 s
    against 0.42 s once compiled, which flatters whichever side of a comparison was compiled."""
    import compileall

    compileall.compile_dir(str(Path(tree) / "nnn_cli"), quiet=1)


def gemm_rate(seconds: float = 3.0) -> float:
    """Sustained fp32 GEMM GFLOP/s of numpy's BLAS, at the bias step's tile shape."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, DIM)).astype(np.float32)
    b = rng.standard_normal((16384, DIM)).astype(np.float32)
    a @ b.T
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b.T
        n += 1
    return 2 * 1024 * 16384 * DIM * n / (time.perf_counter() - t) / 1e9


def topk_engines(g: np.ndarray, r: np.ndarray, k: int) -> dict:
    import faiss

    from nnn_cli.core.topk import topk_scores

    flops = 2.0 * len(g) * len(r) * DIM
    out = {}
    t = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(r)
    d_flat, _ = index.search(g, k)
    out["faiss_IndexFlatIP"] = time.perf_counter() - t
    t = time.perf_counter()
    d_knn, _ = faiss.knn(g, r, k, metric=faiss.METRIC_INNER_PRODUCT)
    out["faiss_knn"] = time.perf_counter() - t
    t = time.perf_counter()
    d_ours = topk_scores(g, r, k)
    out["gemm_partition"] = time.perf_counter() - t
    assert np.abs(d_ours - d_flat).max() < 1e-4 and np.abs(d_ours - d_knn).max() < 1e-4
    return {name: {"seconds": round(s, 3), "gflops": round(flops / s / 1e9, 1)} for name, s in out.items()}


def ann_reference(
    g: np.ndarray, r: np.ndarray, k: int, exact_topk: np.ndarray, exact_seconds: float, kinds: list[str]
) -> dict:
    from nnn_cli.scale.index.choose import choose_index
    from nnn_cli.scale.index.depth import score_recall
    from nnn_cli.scale.index.steps import indexed_reference_topk

    out = {}
    for kind in kinds:
        choice = choose_index(kind, len(g), len(r), DIM, k, recall=0.95)
        t = time.perf_counter()
        topk, run = indexed_reference_topk(g, r, k, "ip", choice)
        sec = time.perf_counter() - t
        err = np.abs(topk.astype(np.float64).mean(1) - exact_topk.astype(np.float64).mean(1))
        out[kind] = {
            "seconds": round(sec, 2),
            "build_seconds": run.info["index_build_seconds"],
            "speedup_vs_exact": round(exact_seconds / sec, 2),
            "recall_all_rows": round(score_recall(topk, exact_topk), 4),
            "tuned": run.info.get("index_tuned"),
            "bias_abs_error_mean": float(err.mean()),
            "bias_abs_error_max": float(err.max()),
            "index": choice.describe(),
        }
    return out


def ann_scale(tmp: Path, n: int, k: int = 16, baseline: str | None = None, no_sketch: bool = False) -> dict:
    """`nnn bias --index auto --recall 0.95` on N x N (float16 files), cold, as a whole process.

    Exact is extrapolated from the exact step timed on a 2,000-row slice of
    the gallery against the whole reference (in-process, no I/O: favourable
    to exact); recall is measured on that slice from the output's stored
    top-k scores.  Speedups are given by wall time and by CPU time (the
    process's, every thread; the exact slice's likewise), the latter for a
    loaded machine.  With ``baseline`` (a source tree of nnn_cli, e.g. a
    worktree of main), the same command with that code runs on the same
    files right after, reported under ``baseline``.  With ``no_sketch``, our command with
    ``--no-leak-sketch`` runs too, reported under ``no_sketch``.
    """
    import h5py

    from nnn_cli.core.topk import topk_scores
    from nnn_cli.scale.index.build import sample_rows
    from nnn_cli.scale.index.depth import score_recall

    for name, seed in (("g_scale", 11), ("r_scale", 12)):
        np.save(tmp / f"{name}.npy", clustered(n, seed).astype(np.float16))
    g = np.load(tmp / "g_scale.npy", mmap_mode="r")
    sample, pos = sample_rows(g, 2000)
    sample = sample.astype(np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    r = np.load(tmp / "r_scale.npy").astype(np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    t, c = time.perf_counter(), time.process_time()
    exact_sample = topk_scores(sample, r, k)
    slice_sec, slice_cpu = time.perf_counter() - t, time.process_time() - c
    del r, g
    exact_est, exact_cpu = slice_sec * n / len(sample), slice_cpu * n / len(sample)

    def one(out: Path, env_extra: dict | None, extra: tuple[str, ...] = ()) -> dict:
        argv = ["bias", str(tmp / "g_scale.npy"), "--reference", str(tmp / "r_scale.npy"), "--alpha", "1"]
        argv += ["--k", str(k), "--index", "auto", "--recall", "0.95", "-o", str(out), "-q", *extra]
        load = os.getloadavg()
        run = run_job("cli", timeout=3600, env_extra=env_extra, argv=argv)
        res: dict = {"cli": run, "load_avg_before": load}
        if run["status"] != "ok":
            return res
        with h5py.File(out, "r") as f:
            topk = f["topk"][pos]
            info: dict = {
                key: (val.item() if hasattr(val, "item") else str(val))
                for key, val in f.attrs.items()
                if key.startswith(("index", "bias_mode"))
            }
        res["seconds_cold"] = round(run["wall_seconds"], 2)
        res["cpu_seconds_cold"] = run.get("cpu_seconds")
        res["speedup"] = round(exact_est / run["wall_seconds"], 1)
        if run.get("cpu_seconds"):
            res["speedup_cpu"] = round(exact_cpu / run["cpu_seconds"], 1)
        res["recall_2000_sample"] = round(score_recall(topk, exact_sample), 4)
        res["peak_rss_gb"] = round(run.get("peak_rss_mb", float("nan")) / 1024, 2)
        res["index_info"] = info
        res["index_chosen"] = info.get("index_description")
        res["build_seconds"] = info.get("index_build_seconds")
        res["load_avg"] = os.getloadavg()
        return res

    res = {
        "n_gallery": n,
        "n_reference": n,
        "k": k,
        "storage": "float16 .npy",
        "exact_slice_rows": len(sample),
        "exact_slice_seconds": round(slice_sec, 2),
        "exact_slice_cpu_seconds": round(slice_cpu, 2),
        "exact_seconds_extrapolated": round(exact_est, 1),
        "exact_cpu_seconds_extrapolated": round(exact_cpu, 1),
        **one(tmp / "scale_bias.h5", None),
    }
    if no_sketch:
        res["no_sketch"] = one(tmp / "scale_bias_no_sketch.h5", None, ("--no-leak-sketch",))
    if baseline:
        res["baseline"] = {"code": baseline, **one(tmp / "scale_bias_baseline.h5", {"NNN_BENCH_CODE": baseline})}
        if res.get("cpu_seconds_cold") and res["baseline"].get("cpu_seconds_cold"):
            res["cpu_time_vs_baseline"] = round(res["cpu_seconds_cold"] / res["baseline"]["cpu_seconds_cold"], 3)
    return res


KERNEL_NEEDS = {"Haswell": "avx2", "SkylakeX": "avx512f", "Sandybridge": "avx"}
"""OpenBLAS kernels forced in the `kernels` section, each only where the CPU has its instructions."""


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernels_section(
    tmp: Path, n: int, m: int, k: int = 128, repeats: int = 3, baseline: str | None = None, no_sketch: bool = False
) -> dict:
    """Exact `nnn bias` (whole process) against the sgemm rate and nnn-retrieval, per OpenBLAS kernel.

    For each kernel the CPU supports, ``repeats`` rounds of (sgemm rate process, `nnn bias` process,
    nnn-retrieval process), interleaved so that the machine's load falls on all three alike; the best of
    each is kept.  fraction = 2 N M d / our wall / sgemm rate (the whole process: imports, reading the
    .npy files, writing the HDF5 output included).  nnn-retrieval runs torch, which does not use OpenBLAS.
    With ``baseline`` (an nnn_cli source tree, e.g. a worktree of an older commit), its `nnn bias` runs in
    every round too, on the same files, reported as ``baseline_*``.  With ``no_sketch``, our `nnn bias
    --no-leak-sketch` (the same HDF5 file without the reference's leak sketch) runs in every round too,
    reported as ``no_sketch_*``.
    """
    g, r = tmp / "kg.npy", tmp / "kr.npy"
    np.save(g, clustered(n, 21))
    np.save(r, clustered(m, 22))
    flags = cpu_flags()
    out: dict = {"n": n, "m": m, "k": k, "d": DIM, "repeats": repeats, "kernels": {}, "skipped": {}}
    argv = ["bias", str(g), "--reference", str(r), "--alpha", "1", "--k", str(k), "--metric", "ip", "-q"]
    for kernel, flag in KERNEL_NEEDS.items():
        if flag not in flags:
            out["skipped"][kernel] = f"this CPU has no {flag}"
            continue
        env = {"OPENBLAS_CORETYPE": kernel}
        runs: dict[str, list] = {"gemm": [], "ours": [], "theirs": []}
        runs.update({key: [] for key, wanted in (("no_sketch", no_sketch), ("baseline", baseline)) if wanted})
        for _ in range(repeats):
            runs["gemm"].append(run_job("gemm", env_extra=env))
            runs["ours"].append(run_job("cli", env_extra=env, argv=argv + ["-o", str(tmp / "kb.h5")]))
            if no_sketch:
                plain = argv + ["-o", str(tmp / "kbn.h5"), "--no-leak-sketch"]
                runs["no_sketch"].append(run_job("cli", env_extra=env, argv=plain))
            if baseline:
                base_env = {**env, "NNN_BENCH_CODE": baseline}
                runs["baseline"].append(run_job("cli", env_extra=base_env, argv=argv + ["-o", str(tmp / "kb0.h5")]))
            runs["theirs"].append(
                run_job("theirs_bias", env_extra=env, g=str(g), r=str(r), k=k, backend="torch", out=str(tmp / "kt.npy"))
            )
        ok = {key: [x for x in val if x["status"] == "ok"] for key, val in runs.items()}
        row: dict = {"runs": runs}
        if all(ok.values()):
            gemm = max(x["gflops"] for x in ok["gemm"])
            ours = min(x["wall_seconds"] for x in ok["ours"])
            theirs = min(x["wall_seconds"] for x in ok["theirs"])
            row.update(
                openblas_kernel=ok["gemm"][0].get("openblas_kernel"),
                sgemm_gflops=round(gemm, 1),
                ours_wall_seconds=round(ours, 2),
                theirs_wall_seconds=round(theirs, 2),
                ours_gflops=round(2.0 * n * m * DIM / ours / 1e9, 1),
                fraction_of_sgemm=round(2.0 * n * m * DIM / ours / 1e9 / gemm, 3),
                theirs_over_ours=round(theirs / ours, 2),
                ours_cpu_seconds=min(x.get("cpu_seconds", float("nan")) for x in ok["ours"]),
            )
            if no_sketch:
                plain_wall = min(x["wall_seconds"] for x in ok["no_sketch"])
                row.update(
                    no_sketch_wall_seconds=round(plain_wall, 2),
                    no_sketch_fraction_of_sgemm=round(2.0 * n * m * DIM / plain_wall / 1e9 / gemm, 3),
                    no_sketch_cpu_seconds=min(x.get("cpu_seconds", float("nan")) for x in ok["no_sketch"]),
                    theirs_over_no_sketch=round(theirs / plain_wall, 2),
                )
            if baseline:
                base = min(x["wall_seconds"] for x in ok["baseline"])
                row.update(
                    baseline_code=baseline,
                    baseline_wall_seconds=round(base, 2),
                    baseline_fraction_of_sgemm=round(2.0 * n * m * DIM / base / 1e9 / gemm, 3),
                    baseline_cpu_seconds=min(x.get("cpu_seconds", float("nan")) for x in ok["baseline"]),
                    theirs_over_baseline=round(theirs / base, 2),
                )
        out["kernels"][kernel] = row
        print(f"kernel {kernel}:", json.dumps({key: v for key, v in row.items() if key != "runs"}), flush=True)
    return out


def best_of(repeats: int, fn):
    """(fastest seconds, last result) of ``repeats`` calls: timings on a shared machine are noisy upwards."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def gallery_side(n: int, n_queries: int, k: int = 10) -> dict:
    """Debiased top-k through IVF/HNSW over [r, b] vs plain-vector index + re-rank; times vs plain faiss."""
    from nnn_cli.core.nnn import compute_bias
    from nnn_cli.core.search import augment_gallery, search
    from nnn_cli.scale.index.build import build_index
    from nnn_cli.scale.index.choose import IndexChoice, default_nlist
    from nnn_cli.scale.index.depth import set_search_depth, topk_recall
    from nnn_cli.scale.index.steps import debiased_search, rerank_debiased

    g, q = clustered(n, 21), clustered(n_queries, 22)
    bias = compute_bias(g, clustered(5000, 23), 0.75, 16)
    _, exact_deb = search(q, g, bias, k)
    _, exact_plain = search(q, g, None, k)
    out = {"n_gallery": n, "n_queries": n_queries, "k": k}
    for kind, depth in (("ivf", {"nprobe": 16}), ("hnsw", {"ef_search": 64})):
        choice = IndexChoice(kind, nlist=default_nlist(n) if kind == "ivf" else None)
        plain_index = build_index(g, choice)
        aug_index = build_index(augment_gallery(g, bias), choice)
        set_search_depth(plain_index, **depth)
        set_search_depth(aug_index, **depth)
        t_plain, (_, plain_ids) = best_of(3, lambda: plain_index.search(q, k))
        q_aug = np.hstack([q, -np.ones((len(q), 1), dtype=np.float32)])
        t_same, _ = best_of(3, lambda: aug_index.search(q_aug, k))  # faiss alone on the same [r, b] index
        row = {
            "depth": depth,
            "plain_faiss_seconds": round(t_plain, 3),
            "faiss_same_index_seconds": round(t_same, 3),
            "plain_recall_vs_exact_plain": round(topk_recall(plain_ids, exact_plain), 4),
        }
        for f in (1, 2):
            sec, (_, ids) = best_of(3, lambda: debiased_search(aug_index, q, g, bias, k, overfetch=f))
            row[f"augmented_overfetch{f}"] = {
                "seconds": round(sec, 3),
                "time_vs_plain": round(sec / t_plain, 2),
                "time_vs_same_index": round(sec / t_same, 2),
                "recall": round(topk_recall(ids, exact_deb), 4),
            }
        for f in (2, 4):
            t = time.perf_counter()
            _, cand = plain_index.search(q, k * f)
            _, ids = rerank_debiased(q, g, bias, cand, k)
            sec = time.perf_counter() - t
            row[f"plain_index_rerank{f}"] = {
                "seconds": round(sec, 3),
                "time_vs_plain": round(sec / t_plain, 2),
                "recall": round(topk_recall(ids, exact_deb), 4),
            }
        out[kind] = row
    return out


def budget_run(tmp: Path, rows: int, budget: str, n_gallery: int) -> dict:
    import h5py

    path = tmp / "big_reference.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("embeddings", shape=(rows, DIM), dtype=np.float32, chunks=(4096, DIM))
        for s in range(0, rows, 100_000):
            e = min(rows, s + 100_000)
            dset[s:e] = clustered(e - s, 1000 + s // 100_000)
    size_gb = path.stat().st_size / 1e9
    np.save(tmp / "budget_g.npy", clustered(n_gallery, 31))
    res = run_job(
        "cli",
        argv=[
            "bias",
            str(tmp / "budget_g.npy"),
            "--reference",
            str(path),
            "--alpha",
            "1",
            "--k",
            "16",
            "-o",
            str(tmp / "budget_bias.h5"),
            "--memory-budget",
            budget,
            "-q",
            "--metric",
            "ip",
        ],
    )
    path.unlink()
    return {"reference_file_gb": round(size_gb, 2), "n_gallery": n_gallery, "budget": budget, **res}


# ---------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-size check")
    ap.add_argument("--full", action="store_true", help="the issue's full sizes (M up to 590k, 1M x 1M ANN, 3 GB)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    ap.add_argument("--only", default="", help="comma-separated sections to run (the others are skipped)")
    ap.add_argument("--ann-n", type=int, default=0, help="N (= M) of the ann_scale section (default: by mode)")
    ap.add_argument(
        "--ann-baseline",
        default="",
        help="ann_scale: also run this nnn_cli source tree (e.g. a worktree of main) on the same files, side by side",
    )
    ap.add_argument(
        "--kernels-baseline",
        default="",
        help="kernels: also run this nnn_cli source tree's `nnn bias` in every round, side by side",
    )
    ap.add_argument(
        "--no-sketch-too",
        action="store_true",
        help="ann_scale and kernels: also run our `nnn bias --no-leak-sketch` (no leak sketch in the bias file)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    mode = "quick" if args.quick else "full" if args.full else "medium"
    size = SIZES[mode]
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= set(SECTIONS) - set(args.only.split(","))
    for tree in filter(None, (str(ROOT), args.ann_baseline, args.kernels_baseline)):
        compile_code(tree)
    tmp = Path(tempfile.mkdtemp(prefix="nnn_bench_scale_"))
    res: dict = {
        "mode": mode,
        "sizes": size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()},
        "dim": DIM,
    }
    ratios: list[tuple[str, str, str, str]] = []
    t_start = time.perf_counter()
    try:
        res["gemm_gflops_start"] = res["gemm_gflops"] = round(gemm_rate(), 1)
        print(f"sustained fp32 GEMM: {res['gemm_gflops']} GFLOP/s", flush=True)
        n = size["n"]
        g = clustered(n, 1)
        np.save(tmp / "g.npy", g)
        res["bias"] = []
        for m in size["ms"] if {"bias", "whole", "ann", "topk"} - skip else []:
            r = clustered(m, 2)
            np.save(tmp / "r.npy", r)
            if m == size["ms"][1] and "topk" not in skip:
                res["topk_engines"] = {k: topk_engines(g[:1000], r, k) for k in size["ks"]}  # 1,000-row slice
                print("top-k engines:", json.dumps(res["topk_engines"]), flush=True)
            input_mb = (g.nbytes + r.nbytes) / 2**20
            for k in size["ks"] if "bias" not in skip else []:
                ours = run_job(
                    "ours_bias", g=str(tmp / "g.npy"), r=str(tmp / "r.npy"), k=k, out=str(tmp / "b_ours.npy")
                )
                theirs = run_job(
                    "theirs_bias",
                    g=str(tmp / "g.npy"),
                    r=str(tmp / "r.npy"),
                    k=k,
                    backend="torch",
                    out=str(tmp / "b_theirs.npy"),
                )
                row = {"n": n, "m": m, "k": k, "input_mb": round(input_mb, 1), "ours": ours, "theirs_torch": theirs}
                if ours["status"] == "ok" and theirs["status"] == "ok":
                    row["max_abs_bias_diff"] = float(
                        np.abs(np.load(tmp / "b_ours.npy") - np.load(tmp / "b_theirs.npy")).max()
                    )
                    ratios.append(
                        (
                            f"bias step N={n} M={m} k={k}",
                            "ours vs GEMM rate (same process)",
                            f"{2.0 * n * m * DIM / ours['seconds'] / 1e9:.0f} / {ours['gemm_gflops_here']:.0f} GFLOP/s",
                            f"{ours['gemm_fraction']:.2f}",
                        )
                    )
                    ratios.append(
                        (
                            f"bias step N={n} M={m} k={k}",
                            "time",
                            f"{ours['seconds']:.2f}s / {theirs['seconds']:.2f}s",
                            f"{ours['seconds'] / theirs['seconds']:.2f}",
                        )
                    )
                    ratios.append(
                        (
                            f"bias step N={n} M={m} k={k}",
                            "peak RSS",
                            f"{ours['peak_rss_mb']:.0f}MB / {theirs['peak_rss_mb']:.0f}MB (inputs {input_mb:.0f}MB)",
                            f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}",
                        )
                    )
                if m == size["ms"][0] and k == size["ks"][0]:
                    row["theirs_faiss_cpu"] = run_job(
                        "theirs_bias",
                        g=str(tmp / "g.npy"),
                        r=str(tmp / "r.npy"),
                        k=k,
                        backend="faiss",
                        out=str(tmp / "b_f.npy"),
                    )
                    ratios.append(("bias step, FaissCPURetriever", "status", row["theirs_faiss_cpu"]["status"], "-"))
                res["bias"].append(row)
                print(json.dumps(row), flush=True)
            if m == size["ms"][min(1, len(size["ms"]) - 1)] and "whole" not in skip:
                k = size["ks"][-1]
                whole_ours = run_job(
                    "cli",
                    argv=[
                        "bias",
                        str(tmp / "g.npy"),
                        "--reference",
                        str(tmp / "r.npy"),
                        "--alpha",
                        "1",
                        "--k",
                        str(k),
                        "-o",
                        str(tmp / "cli_bias.h5"),
                        "--metric",
                        "ip",
                        "-q",
                    ],
                )
                whole_theirs = run_job(
                    "theirs_bias",
                    g=str(tmp / "g.npy"),
                    r=str(tmp / "r.npy"),
                    k=k,
                    backend="torch",
                    out=str(tmp / "b_theirs2.npy"),
                )
                res["whole_process"] = {"n": n, "m": m, "k": k, "ours_cli": whole_ours, "theirs_torch": whole_theirs}
                if whole_ours["status"] == "ok" and whole_theirs["status"] == "ok":
                    ratios.append(
                        (
                            f"whole process `nnn bias` N={n} M={m} k={k}",
                            "wall",
                            f"{whole_ours['wall_seconds']:.2f}s / {whole_theirs['wall_seconds']:.2f}s",
                            f"{whole_ours['wall_seconds'] / whole_theirs['wall_seconds']:.2f}",
                        )
                    )
                    ratios.append(
                        (
                            f"whole process `nnn bias` N={n} M={m} k={k}",
                            "peak RSS / inputs",
                            f"{whole_ours['peak_rss_mb']:.0f}MB / {input_mb:.0f}MB",
                            f"{whole_ours['peak_rss_mb'] / input_mb:.2f}",
                        )
                    )
                print("whole process:", json.dumps(res["whole_process"]), flush=True)
            if m == size["ann_m"] and "ann" not in skip:
                from nnn_cli.core.topk import topk_scores

                res["ann"] = {}
                for k in size["ks"]:
                    t = time.perf_counter()
                    exact_topk = topk_scores(g, r, k)
                    exact_sec = time.perf_counter() - t
                    kinds = ["ivf", "hnsw"] if size["hnsw"] else ["ivf"]
                    res["ann"][str(k)] = {
                        "exact_seconds": round(exact_sec, 2),
                        **ann_reference(g, r, k, exact_topk, exact_sec, kinds),
                    }
                    for kind in kinds:
                        a = res["ann"][str(k)][kind]
                        ratios.append(
                            (
                                f"bias, {kind} --recall 0.95, M={m} k={k}",
                                "time vs exact (recall, |bias err|)",
                                f"{a['seconds']:.1f}s / {exact_sec:.1f}s (R={a['recall_all_rows']:.3f}, "
                                f"{a['bias_abs_error_mean']:.1e})",
                                f"{a['seconds'] / exact_sec:.2f}",
                            )
                        )
                print("ann:", json.dumps(res["ann"]), flush=True)
        r = None
        if "search" not in skip:
            m0 = size["ms"][0]
            r = clustered(m0, 2)
            np.save(tmp / "r0.npy", r)
            from nnn_cli.core.nnn import compute_bias

            np.save(tmp / "b0.npy", compute_bias(g, r, 1.0, 16))
            q = clustered(size["q"], 3)
            np.save(tmp / "q.npy", q)
            ours = run_job(
                "ours_search",
                g=str(tmp / "g.npy"),
                q=str(tmp / "q.npy"),
                b=str(tmp / "b0.npy"),
                k=10,
                out=str(tmp / "s_ours.npy"),
            )
            theirs = run_job(
                "theirs_search",
                g=str(tmp / "g.npy"),
                q=str(tmp / "q.npy"),
                r=str(tmp / "r0.npy"),
                kb=16,
                k=10,
                out=str(tmp / "s_theirs.npy"),
            )
            res["search"] = {"n": n, "q": size["q"], "ours": ours, "theirs_torch": theirs}
            if ours["status"] == "ok" and theirs["status"] == "ok":
                agree = float((np.load(tmp / "s_ours.npy")[:, 0] == np.load(tmp / "s_theirs.npy")[:, 0]).mean())
                res["search"]["top1_agreement"] = agree
                ratios.append(
                    (
                        f"search step Q={size['q']} N={n} top-10",
                        "time",
                        f"{ours['seconds']:.2f}s / {theirs['seconds']:.2f}s",
                        f"{ours['seconds'] / theirs['seconds']:.2f}",
                    )
                )
            print("search:", json.dumps(res["search"]), flush=True)
        if "gallery" not in skip:
            res["gallery_index"] = gallery_side(size["gallery_n"], 5000 if mode != "quick" else 1000)
            for kind in ("ivf", "hnsw"):
                row = res["gallery_index"][kind]
                best = row["augmented_overfetch1"]
                ratios.append(
                    (
                        f"search, {kind} over [r,b], N={size['gallery_n']}",
                        "time vs faiss alone, same index",
                        f"{best['seconds']:.3f}s / {row['faiss_same_index_seconds']:.3f}s (R={best['recall']:.3f})",
                        f"{best['time_vs_same_index']:.2f}",
                    )
                )
                ratios.append(
                    (
                        f"search, {kind} over [r,b], N={size['gallery_n']}",
                        "time vs plain index over r",
                        f"{best['seconds']:.3f}s / {row['plain_faiss_seconds']:.3f}s (plain recall "
                        f"{row['plain_recall_vs_exact_plain']:.3f} of plain top-k)",
                        f"{best['time_vs_plain']:.2f}",
                    )
                )
            print("gallery index:", json.dumps(res["gallery_index"]), flush=True)
        if "ann_scale" not in skip:
            res["ann_scale"] = ann_scale(
                tmp, args.ann_n or size["scale_n"], baseline=args.ann_baseline or None, no_sketch=args.no_sketch_too
            )
            a = res["ann_scale"]
            if "speedup" in a:
                ratios.append(
                    (
                        f"`nnn bias --index auto --recall 0.95`, {a['n_gallery']} x {a['n_reference']} k=16, cold",
                        "process time vs exact step (recall)",
                        f"{a['seconds_cold']:.0f}s / {a['exact_seconds_extrapolated']:.0f}s extrap. "
                        f"(R={a['recall_2000_sample']:.3f})",
                        f"{1 / a['speedup']:.3f}",
                    )
                )
            if "speedup" in a.get("no_sketch", {}):
                plain = a["no_sketch"]
                ratios.append(
                    (
                        f"the same with --no-leak-sketch ({plain['speedup']:.1f}x wall, {plain['speedup_cpu']:.1f}x CPU)",
                        "process time vs exact step (recall)",
                        f"{plain['seconds_cold']:.0f}s / {a['exact_seconds_extrapolated']:.0f}s extrap. "
                        f"(R={plain['recall_2000_sample']:.3f})",
                        f"{1 / plain['speedup']:.3f}",
                    )
                )
            print("ann scale:", json.dumps(res["ann_scale"]), flush=True)
        if "kernels" not in skip:
            kn, km = (1000, 20000) if mode == "quick" else (5000, 118000)
            res["kernels"] = kernels_section(
                tmp,
                kn,
                km,
                128,
                2 if mode == "quick" else 3,
                baseline=args.kernels_baseline or None,
                no_sketch=args.no_sketch_too,
            )
            for kernel, row in res["kernels"]["kernels"].items():
                if "fraction_of_sgemm" in row:
                    what = f"whole `nnn bias` N={kn} M={km} k=128, OpenBLAS {kernel}"
                    ratios.append(
                        (
                            what,
                            "fraction of sgemm (whole process)",
                            f"{row['ours_gflops']:.0f} / {row['sgemm_gflops']:.0f} GFLOP/s",
                            f"{row['fraction_of_sgemm']:.2f}",
                        )
                    )
                    if "no_sketch_wall_seconds" in row:
                        ratios.append(
                            (
                                what,
                                "fraction of sgemm, --no-leak-sketch (nnn-retrieval / it)",
                                f"{row['no_sketch_wall_seconds']:.2f}s ({row['theirs_over_no_sketch']:.2f}x)",
                                f"{row['no_sketch_fraction_of_sgemm']:.2f}",
                            )
                        )
                    if "baseline_wall_seconds" in row:
                        ratios.append(
                            (
                                what,
                                "fraction of sgemm, baseline code",
                                f"{row['baseline_wall_seconds']:.2f}s ({row['baseline_code']})",
                                f"{row['baseline_fraction_of_sgemm']:.2f}",
                            )
                        )
                    ratios.append(
                        (
                            what,
                            "nnn-retrieval wall / ours",
                            f"{row['theirs_wall_seconds']:.2f}s / {row['ours_wall_seconds']:.2f}s",
                            f"{row['theirs_over_ours']:.2f}",
                        )
                    )
            for kernel, why in res["kernels"]["skipped"].items():
                ratios.append((f"whole `nnn bias`, OpenBLAS {kernel}", "skipped", why, "-"))
        if "budget" not in skip:
            res["budget"] = budget_run(tmp, size["budget_rows"], size["budget"], size["budget_g"])
            b = res["budget"]
            ratios.append(
                (
                    f"{b['reference_file_gb']} GB reference, --memory-budget {b['budget']}",
                    "peak RSS",
                    f"{b.get('peak_rss_mb', float('nan')):.0f}MB ({b['status']}, {b['wall_seconds']:.0f}s)",
                    "-",
                )
            )
            print("budget:", json.dumps(res["budget"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["ratios"] = [dict(zip(("what", "measure", "ours / theirs", "ratio"), row)) for row in ratios]
    width = max(len(r[0]) for r in ratios) if ratios else 10
    print(f"\n{'what':<{width}}  {'measure':<36} {'ours / theirs':<58} ratio")
    for what, measure, detail, ratio in ratios:
        print(f"{what:<{width}}  {measure:<36} {detail:<58} {ratio}")
    print(f"(GEMM {res['gemm_gflops']} GFLOP/s; total {res['total_seconds']}s; load {res['machine']['load_avg_end']})")
    out = ROOT / "bench" / "results" / f"bench_scale_{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
