"""Embedding backends side by side: texts/s of whole `nnn embed` processes, and what each keeps of retrieval.

Text: paragraphs of the docstrings of Python's standard library on this machine (deterministic for a
Python version), one a line, cut at 1,000 characters.  A retrieval task is made from the same text:
each paragraph with two or more sentences gives a query (its first sentence) and a gallery item (the
rest); even pairs are the test queries, odd pairs' queries the NNN reference set.  The lines file
holds those queries and gallery items first, then other paragraphs, up to ``--n`` lines.

For each backend (torch fp32, ONNX fp32, ONNX int8, OpenVINO fp32 when ``openvino`` is installed),
``nnn embed`` runs as a whole process on the first ``--small`` fraction of the lines and on all of
them, the backends interleaved in each of ``--rounds`` rounds; the **marginal rate** is
``(n - n_small) / (t_all - t_small)`` with each time the best of the rounds, so start-up (imports,
model load) cancels out.  The same rate from the processes' CPU time (user + system, all threads) is
printed beside it: on a machine shared with other work it moves far less than wall time.  The export cache is filled before timing (its one-off cost is printed).
From the full outputs: cosine of each row to torch fp32 (min, 0.1% quantile), the test queries'
top-10 agreement with torch's, and R@1 of the task without and with NNN (alpha 0.5, k 8, exact).
Last, ``nnn query`` whole-process wall and CPU time: the median of ``--query-runs`` runs after one that fills the cache.

    .venv/bin/python bench/bench_embed.py                     # 10,000 lines, 1 round
    .venv/bin/python bench/bench_embed.py --n 3000 --rounds 2 --backends torch,onnx,onnx-int8

Prints a table and writes JSON (default bench/results/embed.json).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util as importlib_util
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "venv"}
ALPHA, K = 0.5, 8
BACKENDS = {
    "torch": ["--backend", "torch"],
    "onnx": ["--backend", "onnx"],
    "onnx-int8": ["--backend", "onnx", "--quantize", "int8"],
    "openvino": ["--backend", "openvino"],
}


def _docstrings(obj, depth: int = 0):
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc:
        yield doc
    if depth == 0 or inspect.isclass(obj):
        for key, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
            if key.startswith("_"):
                continue
            if inspect.isclass(value) and depth == 0:
                yield from _docstrings(value, 1)
            elif callable(value) or isinstance(value, (property, staticmethod, classmethod)):
                doc = getattr(value, "__doc__", None)
                if isinstance(doc, str) and doc:
                    yield doc


def paragraphs() -> list[str]:
    """Distinct paragraphs (>= 40 characters, no doctest) of the standard library's docstrings."""
    import pkgutil

    warnings.filterwarnings("ignore")
    names: list[str] = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_MODULES:
            continue
        names.append(top)
        try:
            mod = importlib.import_module(top)
        except BaseException:
            continue
        if hasattr(mod, "__path__"):
            for info in pkgutil.walk_packages(mod.__path__, top + "."):
                if not any(part in info.name for part in ("test", "__main__", "idle")):
                    names.append(info.name)
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        try:
            mod = importlib.import_module(name)
        except BaseException:
            continue
        for doc in _docstrings(mod):
            for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
                text = " ".join(para.split())[:1000]
                if len(text) >= 40 and text not in seen and ">>>" not in text:
                    seen.add(text)
                    out.append(text)
    return out


def build_task(n: int) -> dict:
    """Lines (queries, gallery items, filler) and the retrieval task's index ranges."""
    paras = paragraphs()
    pairs: list[tuple[str, str]] = []
    rest: list[str] = []
    for text in paras:
        m = re.search(r"(?<=[.!?])\s+(?=[A-Z])", text)
        if m and m.start() >= 20 and len(text) - m.end() >= 20:
            pairs.append((text[: m.start()], text[m.end() :]))
        else:
            rest.append(text)
    pairs = pairs[: n // 2]
    queries = [q for q, _ in pairs]
    gallery = [g for _, g in pairs]
    filler = rest[: max(0, n - 2 * len(pairs))]
    lines = queries + gallery + filler
    return {"lines": lines[:n], "n_pairs": len(pairs), "n_paragraphs": len(paras)}


def _child_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_embed(lines_file: Path, out: Path, flags: list[str], threads: int) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one whole `nnn embed` process."""
    cmd = [sys.executable, "-m", "nnn_cli", "embed", str(lines_file), "-o", str(out), "-q", "--restart", *flags]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cpu = _child_cpu()
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds, _child_cpu() - cpu


def read_rows(path: Path, n: int) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        emb = np.asarray(f["embeddings"], dtype=np.float32)
        ids = [int(x.decode() if isinstance(x, bytes) else x) for x in f["ids"][:]]
    out = np.zeros((n, emb.shape[1]), dtype=np.float32)
    out[np.asarray(ids) - 1] = emb  # ids are 1-based line numbers
    return out


def retrieval(emb: np.ndarray, n_pairs: int) -> dict:
    from nnn_cli.core.nnn import compute_bias
    from nnn_cli.core.search import search

    q_all, gallery = emb[:n_pairs], emb[n_pairs : 2 * n_pairs]
    test = np.arange(0, n_pairs, 2)
    reference = q_all[1::2]
    _, top_plain = search(q_all[test], gallery, None, 10)
    bias = compute_bias(gallery, reference, ALPHA, K)
    _, top_nnn = search(q_all[test], gallery, bias, 10)
    return {
        "r1": float((top_plain[:, 0] == test).mean() * 100),
        "r1_nnn": float((top_nnn[:, 0] == test).mean() * 100),
        "top10": top_plain,
    }


def query_wall(gallery: Path, backend_flags: list[str], runs: int = 9) -> tuple[float, float, list[float]]:
    """Median wall and CPU seconds of ``runs`` whole `nnn query` processes after one that fills the cache."""
    import statistics

    cmd = [sys.executable, "-m", "nnn_cli", "query", "how to read a file", "--gallery", str(gallery), "-n", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls, cpus = [], []
    for _ in range(runs + 1):
        cpu = _child_cpu()
        t = time.perf_counter()
        proc = subprocess.run(cmd + backend_flags, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        cpus.append(_child_cpu() - cpu)
        if proc.returncode != 0:
            raise SystemExit(f"nnn query failed: {proc.stderr.strip()[-300:]}")
    return statistics.median(walls[1:]), statistics.median(cpus[1:]), walls[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="lines of text (default 10,000)")
    ap.add_argument("--small", type=float, default=0.2, help="fraction of the lines in the short run")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (best time of each kept)")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino")
    ap.add_argument("--threads", type=int, default=0, help="--threads of nnn embed (0: all cores)")
    ap.add_argument("--query-runs", type=int, default=9, help="nnn query runs per backend (median reported)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "embed.json")
    args = ap.parse_args()

    names = [b for b in args.backends.split(",") if b]
    if "openvino" in names and importlib_util.find_spec("openvino") is None:
        print("openvino is not installed: its column is left out")
        names.remove("openvino")
    if names[0] != "torch":
        raise SystemExit("--backends must start with torch (the reference)")
    task = build_task(args.n)
    lines = task["lines"]
    n, n_small = len(lines), max(1, int(len(lines) * args.small))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{n} lines ({task['n_pairs']} query/gallery pairs) from {task['n_paragraphs']} docstring paragraphs "
        f"of Python {platform.python_version()}; short run {n_small} lines; {os.cpu_count()} CPUs, load {load:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        full, small = tmp_path / "all.txt", tmp_path / "small.txt"
        full.write_text("\n".join(lines) + "\n", encoding="utf-8")
        small.write_text("\n".join(lines[:n_small]) + "\n", encoding="utf-8")
        warm = tmp_path / "warm.txt"
        warm.write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
        first_run = {}
        for name in names:  # fills the export cache (a no-op when it is already there)
            first_run[name] = run_embed(warm, tmp_path / "warm.h5", BACKENDS[name], args.threads)[0]
        times: dict[str, dict[str, list[float]]] = {
            name: {"small": [], "all": [], "small_cpu": [], "all_cpu": []} for name in names
        }
        for r in range(args.rounds):
            for name in names:
                for size, path in (("small", small), ("all", full)):
                    out = tmp_path / (f"{name}.h5" if size == "all" else f"{name}-s.h5")
                    wall, cpu = run_embed(path, out, BACKENDS[name], args.threads)
                    times[name][size].append(wall)
                    times[name][f"{size}_cpu"].append(cpu)
                print(
                    f"  round {r + 1} {name}: {times[name]['small'][-1]:.1f}s, {times[name]['all'][-1]:.1f}s wall; "
                    f"{times[name]['small_cpu'][-1]:.1f}s, {times[name]['all_cpu'][-1]:.1f}s CPU",
                    flush=True,
                )
        emb = {name: read_rows(tmp_path / f"{name}.h5", n) for name in names}
        quality = {name: retrieval(emb[name], task["n_pairs"]) for name in names}
        query_s = {}
        for name in names:
            query_s[name] = query_wall(tmp_path / f"{name}.h5", [], args.query_runs)
    rows = []
    base = cpu_base = None
    for name in names:
        t_small, t_all = min(times[name]["small"]), min(times[name]["all"])
        rate = (n - n_small) / max(t_all - t_small, 1e-9)
        c_small, c_all = min(times[name]["small_cpu"]), min(times[name]["all_cpu"])
        cpu_rate = (n - n_small) / max(c_all - c_small, 1e-9)
        base = base or rate
        cpu_base = cpu_base or cpu_rate
        cos = (emb[name] * emb["torch"]).sum(axis=1)
        agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(quality[name]["top10"], quality["torch"]["top10"])])
        rows.append(
            {
                "backend": name,
                "texts_per_s": round(rate, 1),
                "speedup": round(rate / base, 2),
                "texts_per_cpu_s": round(cpu_rate, 1),
                "cpu_speedup": round(cpu_rate / cpu_base, 2),
                "whole_run_s": round(t_all, 1),
                "first_run_s": round(first_run[name], 1),
                "cos_min": round(float(cos.min()), 4),
                "cos_q001": round(float(np.quantile(cos, 0.001)), 4),
                "top10_agree": round(float(agree) * 100, 1),
                "r1": round(quality[name]["r1"], 2),
                "r1_nnn": round(quality[name]["r1_nnn"], 2),
                "query_s": round(query_s[name][0], 2),
                "query_cpu_s": round(query_s[name][1], 2),
                "query_walls": [round(w, 2) for w in query_s[name][2]],
            }
        )
    header = (
        f"{'backend':<10} {'texts/s':>8} {'x torch':>8} {'texts/CPU-s':>11} {'x torch':>8} {'cos min':>8} {'cos 0.1%':>9} {'top10':>6} "
        f"{'R@1':>6} {'R@1 NNN':>8} {'query s':>8} {'CPU s':>6}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['backend']:<10} {row['texts_per_s']:>8.1f} {row['speedup']:>8.2f} {row['texts_per_cpu_s']:>11.1f} "
            f"{row['cpu_speedup']:>8.2f} {row['cos_min']:>8.4f} {row['cos_q001']:>9.4f} {row['top10_agree']:>5.1f}% "
            f"{row['r1']:>6.2f} {row['r1_nnn']:>8.2f} {row['query_s']:>8.2f} {row['query_cpu_s']:>6.2f}"
        )
    print(
        f"texts/s: marginal rate of whole `nnn embed` processes ({n_small} vs {n} lines, best of {args.rounds}); "
        "texts/CPU-s: the same from their CPU time (user + system, all threads), steadier on a shared machine; "
        f"R@1 on {task['n_pairs'] // 2} test queries, NNN alpha {ALPHA} k {K} with {task['n_pairs'] // 2} "
        f"reference queries; query s / CPU s: median of {args.query_runs} whole `nnn query` processes on that "
        "backend's gallery after one that fills the cache; load average at the end "
        f"{os.getloadavg()[0]:.1f}"
    )
    result = {
        "n_lines": n,
        "n_small": n_small,
        "n_pairs": task["n_pairs"],
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "load_average_start": load,
        "rows": rows,
        "times": times,
        "note": "shared machine: other developers' processes were running; compare ratios within one run",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
