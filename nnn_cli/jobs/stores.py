"""Vector stores in the use cases: biases computed in place (``nnn bias URI --in-place [--only-new]``),
debiased queries through the store's own index (``nnn search --store``, ``nnn eval --store``) and its
provenance (``nnn info URI --table T``).

The store is opened by :func:`~nnn_cli.data.stores.open_store` and used through its interface only:
nothing here depends on which store it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

from nnn_cli._version import __version__
from nnn_cli.core.nnn import check_k
from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import check_matches_parts, combined_fingerprint, now_utc, part_record, same_number
from nnn_cli.data.results import write_jsonl
from nnn_cli.data.stores import open_store
from nnn_cli.data.stores.common import (
    BIAS_COLUMN,
    StoreHits,
    VectorStore,
    closing,
    nnn_rows,
    store_source,
    where,
)
from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.jobs.common import (
    JobResult,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    open_source,
    resolve_params,
    setup_threads,
)
from nnn_cli.scale.plan import plan_bias, run_bias_plan


def bias_in_place(
    store_uri: str,
    reference: Optional[PathLike],
    *,
    table: str,
    column: str = "embedding",
    id_column: Optional[str] = None,
    alpha: Optional[float] = None,
    k: Optional[int] = None,
    params: Optional[PathLike] = None,
    metric: str = "cosine",
    only_new: bool = False,
    reference_add: Optional[PathLike] = None,
    threads: int = 0,
    wait: float = 10.0,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Read ``column`` of ``table``, compute each row's bias against ``reference`` and write ``nnn_bias``,
    ``nnn_vector`` (``[r, b]``) and ``nnn_topk`` beside the user's columns (which are never written).

    ``only_new``: only rows whose ``nnn_bias`` is NULL, with the parameters the store recorded (a new
    item's bias depends on the reference alone, so this equals a full run).  ``reference_add``: new reference
    queries folded into every row's stored top-k (``nnn_topk``; cost N x M_new), exact.  Runs under the
    store's lock.
    """
    notes = Notes(on_note)
    if not table:
        raise ParameterError("--in-place needs --table NAME (and --column, the vector column)")
    if reference_add is not None:
        if reference is not None or only_new or alpha is not None or k is not None or params is not None:
            raise ParameterError(
                "--reference-add on a store uses the recorded reference and parameters: drop -r, --only-new, "
                "--alpha/--k/--params"
            )
        return _reference_add(
            store_uri,
            reference_add,
            table,
            column,
            id_column,
            metric,
            threads,
            wait,
            io_timeout,
            storage_options,
            notes,
        )
    if reference is None:
        raise ParameterError("--in-place needs --reference R (or --reference-add NEW to grow the recorded one)")
    r_src = open_source(reference, "reference", notes)
    with closing(
        open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options, application="nnn bias")
    ) as store:
        with store.lock(table, wait):
            meta = store.read_meta(table)
            if only_new:
                alpha, k, metric = _recorded_params(store, table, meta, alpha, k, params, metric, column, r_src)
            else:
                alpha, k = resolve_params(alpha, k, params)
            ids, vectors = store.read(table, column, id_column, only_missing=only_new)
            if len(ids) == 0:
                return JobResult(
                    {"store": store.label, "table": table, "rows": 0, "message": f"{where(store, table)}: no new rows"},
                    None,
                    notes.lines,
                )
            g_src = store_source(f"{where(store, table, column)}", vectors, ids)
            check_same_dim(g_src, r_src)
            check_k(k, r_src.n)
            setup_threads(threads)
            plan = plan_bias(g_src, r_src, k)
            t0 = time.perf_counter()
            b, topk, _ = run_bias_plan(plan, g_src, r_src, alpha, k, metric, progress)
            rows = nnn_rows(g_src.read(metric), b)
            meta = _in_place_meta(
                meta if only_new else None, store, table, column, id_column, g_src, r_src, alpha, k, metric
            )
            store.write_bias(table, column, id_column, ids, b, rows, topk, meta)
            elapsed = time.perf_counter() - t0
            label = store.label
    summary = {
        "store": label,
        "table": table,
        "column": column,
        "rows": len(ids),
        "only_new": only_new,
        "n_gallery": meta["n_gallery"],
        "n_reference": r_src.n,
        "alpha": alpha,
        "k": k,
        "metric": metric,
        "seconds": round(elapsed, 3),
        "bias_mean": float(b.mean()),
    }
    summary["message"] = (
        f"wrote {BIAS_COLUMN} and nnn_vector of {len(ids)} {'new ' if only_new else ''}rows in {label} table "
        f"{table!r} (alpha={alpha}, k={k}, metric={metric}, {r_src.n} reference queries) in {elapsed:.2f}s"
    )
    return JobResult(summary, None, notes.lines)


def _reference_add(
    store_uri, reference_add, table, column, id_column, metric, threads, wait, io_timeout, storage_options, notes
) -> JobResult:
    """Every row's bias after adding new reference queries: its stored top-k merged with its top-k against
    them, exactly as `nnn bias --update BIAS.h5 --reference-add NEW` does for a bias file."""
    from nnn_cli.core.nnn import bias_from_topk, merge_topk, reference_topk

    new_src = open_source(reference_add, "new reference queries", notes)
    with closing(
        open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options, application="nnn bias")
    ) as store:
        with store.lock(table, wait):
            meta = store.read_meta(table)
            if meta is None or meta.get("mode") != "in-place":
                raise InputError(f"{where(store, table)}: no earlier nnn bias --in-place run recorded to add to")
            if metric != meta["metric"] or column != meta.get("column"):
                raise ParameterError(
                    f"{where(store, table)}: was made from column {meta.get('column')!r} with --metric "
                    f"{meta['metric']}; give those"
                )
            parts = list(meta.get("reference_parts") or [])
            if any(p.get("fingerprint") == new_src.fingerprint() for p in parts):
                raise MismatchError(
                    f"{new_src.name}: is already part of the reference of {where(store, table)} (not added twice)"
                )
            ids, vectors = store.read(table, column, id_column)
            g_src = store_source(f"{where(store, table, column)}", vectors, ids)
            check_same_dim(g_src, new_src)
            alpha, k = float(meta["alpha"]), int(meta["k"])
            old_topk = store.read_topk(table, id_column, ids, k)
            setup_threads(threads)
            t0 = time.perf_counter()
            g = g_src.read(metric)
            topk = merge_topk(old_topk, reference_topk(g, new_src.read(metric), min(k, new_src.n)), k)
            b = bias_from_topk(topk, alpha, k)
            parts.append(part_record(new_src))
            meta = dict(meta)
            meta.update(
                {
                    "reference_parts": parts,
                    "reference_fingerprint": combined_fingerprint(parts),
                    "reference_path": " + ".join(str(p["path"]) for p in parts),
                    "n_reference": sum(int(p["rows"]) for p in parts),
                    "updated": now_utc(),
                }
            )
            meta["history"] = list(meta.get("history", [])) + [
                {"op": "reference-add", "n_added": new_src.n, "fingerprint": new_src.fingerprint(), "time": now_utc()}
            ]
            store.write_bias(table, column, id_column, ids, b, nnn_rows(g, b), topk, meta)
            elapsed = time.perf_counter() - t0
            label = store.label
    summary = {
        "store": label,
        "table": table,
        "rows": len(ids),
        "operation": "reference-add",
        "n_added": new_src.n,
        "n_reference": meta["n_reference"],
        "alpha": alpha,
        "k": k,
        "metric": metric,
        "seconds": round(elapsed, 3),
    }
    summary["message"] = (
        f"updated {BIAS_COLUMN} of {len(ids)} rows in {label} table {table!r}: added {new_src.n} reference "
        f"queries ({meta['n_reference']} in all) in {elapsed:.2f}s"
    )
    return JobResult(summary, None, notes.lines)


def _recorded_params(store, table, meta, alpha, k, params, metric, column, r_src):
    """``--only-new`` uses what the first run recorded; what is given must agree, and so must the reference."""
    if meta is None or meta.get("mode") != "in-place":
        raise InputError(
            f"{where(store, table)}: no earlier nnn bias --in-place run recorded; run once without --only-new"
        )
    if params is not None:
        alpha, k = resolve_params(None, None, params)
    for key, have in (("alpha", alpha), ("k", k)):
        if have is not None and not same_number(have, meta[key]):
            raise ParameterError(
                f"{where(store, table)}: was made with {key}={meta[key]}, not {have}; drop --{key}/--params"
            )
    if metric != meta["metric"]:
        raise ParameterError(f"{where(store, table)}: was made with --metric {meta['metric']}, not {metric}")
    if meta.get("column") != column:
        raise ParameterError(f"{where(store, table)}: was made from column {meta.get('column')!r}, not {column!r}")
    check_matches_parts(
        meta,
        "reference",
        r_src,
        where(store, table),
        "give that reference (all its parts, in order), or recompute every row without --only-new",
    )
    return float(meta["alpha"]), int(meta["k"]), str(meta["metric"])


def _in_place_meta(old, store, table, column, id_column, g_src, r_src, alpha, k, metric) -> dict:
    entry = {
        "op": "only-new" if old else "in-place",
        "n_added": g_src.n,
        "fingerprint": g_src.fingerprint(),
        "time": now_utc(),
    }
    meta = dict(old or {})
    n_before = int(meta.get("n_gallery", 0)) if old else 0
    meta.update(
        {
            "nnn_kind": "store",
            "nnn_version": __version__,
            "mode": "in-place",
            "column": column,
            "id_column": id_column or store_key(store, table),
            "dim": g_src.dim,
            "alpha": alpha,
            "k": k,
            "metric": metric,
            "store_metric": "ip",
            "n_gallery": n_before + g_src.n,
            "reference_path": r_src.name,
            "reference_fingerprint": r_src.fingerprint(),
            "reference_parts": [part_record(r_src)],
            "n_reference": r_src.n,
            "updated": now_utc(),
        }
    )
    meta.setdefault("created", meta["updated"])
    meta["history"] = list(meta.get("history", [])) + [entry]
    return meta


def store_key(store: VectorStore, table: str) -> str | None:
    """The row key the store uses (its primary key, where it has one)."""
    return store.row_key(table)


def checked_meta(store: VectorStore, table: str, metric: str, force: bool) -> dict:
    """The store's provenance, refused (unless ``force``) when rows were added or removed since the biases were
    computed, or the metric differs: the stale guard of a bias file, for a store."""
    meta = store.read_meta(table)
    if meta is None:
        raise InputError(
            f"{where(store, table)}: holds no nnn provenance; write it with nnn export or nnn bias --in-place"
        )
    n, missing = store.counts(table)
    if missing and not force:
        raise MismatchError(
            f"{where(store, table)}: {missing} of {n} rows have no {BIAS_COLUMN} (added since the last run): "
            "run nnn bias URI --table T --in-place --only-new, or pass --force"
        )
    if n != int(meta.get("n_gallery", n)) and not force:
        raise MismatchError(
            f"{where(store, table)}: holds {n} rows but its biases were computed for {meta['n_gallery']}: "
            "recompute them, or pass --force"
        )
    if meta.get("metric") != metric and not force:
        raise MismatchError(
            f"{where(store, table)}: was made with --metric {meta.get('metric')}, but this run uses --metric {metric}; "
            f"pass --metric {meta.get('metric')} or --force"
        )
    return meta


def search_store(
    queries: PathLike,
    store_uri: str,
    output: PathLike,
    *,
    table: str,
    top_k: int = 10,
    metric: str = "cosine",
    force: bool = False,
    stream: TextIO | None = None,
    query_ids: Optional[PathLike] = None,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Send ``[q, -1]`` for each query to the store's own search and write the hits as `nnn search -o -` does
    (JSON lines; ``index`` is the export row, -1 for tables debiased in place)."""
    notes = Notes(on_note)
    if top_k < 1:
        raise ParameterError(f"--top-k must be >= 1, got {top_k}")
    to_stream = str(output) == "-"
    if to_stream and stream is None:
        raise ParameterError("output '-' needs a stream to write the JSON lines to")
    if not to_stream:
        if not str(output).lower().endswith(".jsonl"):
            raise ParameterError(f"{output}: with --store the results are JSON lines: use -o - or -o FILE.jsonl")
        check_output_path(output, [queries], (".jsonl",), "results output")
    q_src = open_source(queries, "queries", notes, query_ids)
    with closing(
        open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options, application="nnn search")
    ) as store:
        meta = checked_meta(store, table, metric, force)
        if int(meta.get("dim", q_src.dim)) != q_src.dim:
            raise MismatchError(f"{q_src.name} has d={q_src.dim} but {where(store, table)} holds d={meta['dim']}")
        q = q_src.read(metric)
        hits = store.search(table, q, top_k, meta)
        label = store.label
    write_jsonl(stream if stream is not None and to_stream else output, hits.scores, hits.rows, hits.ids, q_src.ids())
    summary = {
        "output": str(output),
        "store": label,
        "table": table,
        "n_queries": q_src.n,
        "top_k": int(hits.ids.shape[1]),
        "metric": metric,
        "store_metric": meta.get("store_metric", "ip"),
        "message": f"searched {label} table {table!r} for {q_src.n} queries (top-{hits.ids.shape[1]}, debiased)",
    }
    return JobResult(summary, None if to_stream else Path(output), notes.lines)


def store_hits(
    store_uri: str, table: str, queries: np.ndarray, top_k: int, metric: str, force: bool, io_timeout: float
) -> tuple[StoreHits, dict]:
    """The store's answer for already-prepared query rows (used by `nnn query --store` and `nnn eval --store`)."""
    with closing(open_store(store_uri, io_timeout=io_timeout)) as store:
        meta = checked_meta(store, table, metric, force)
        return store.search(table, queries, top_k, meta), meta


def store_info(
    store_uri: str, table: str, *, io_timeout: float | None = None, storage_options: dict | None = None
) -> dict:
    """What ``nnn info URI --table T`` shows: the table's rows, rows without a bias and its recorded provenance."""
    with closing(open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options)) as store:
        if not store.exists(table):
            raise InputError(f"{where(store, table)}: no such table")
        n, missing = store.counts(table)
        meta = store.read_meta(table)
        return {
            "store": store.label,
            "kind": store.kind,
            "table": table,
            "rows": n,
            "rows_without_bias": missing,
            "nnn": meta,
        }


def store_recall(
    queries: PathLike,
    gallery: PathLike,
    truth: PathLike,
    store_uri: str,
    *,
    table: str,
    metric: str = "cosine",
    force: bool = False,
    query_ids: Optional[PathLike] = None,
    gallery_ids: Optional[PathLike] = None,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
) -> dict:
    """`nnn eval --store`: Recall@1/5/10 of the debiased ranking the store's own index returns (its ANN index,
    where it has one), to set beside exact NNN: what the index costs.  Hits map back to gallery rows by the
    export's row number, or by id (the gallery's ids)."""
    from nnn_cli.core.metrics import recall_from_topk
    from nnn_cli.data.tables import read_truth

    notes = Notes(None)
    q_src = open_source(queries, "queries", notes, query_ids)
    g_src = open_source(gallery, "gallery", notes, gallery_ids)
    check_same_dim(q_src, g_src)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
    with closing(open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options)) as store:
        meta = checked_meta(store, table, metric, force)
        if int(meta.get("n_gallery", g_src.n)) != g_src.n:
            raise MismatchError(f"{where(store, table)}: holds {meta['n_gallery']} rows, {g_src.name} has {g_src.n}")
        t0 = time.perf_counter()
        hits = store.search(table, q_src.read(metric), 10, meta)
        seconds = time.perf_counter() - t0
        label = store.label
    rows = hits.rows.copy()
    if (rows < 0).any():  # in place: by id
        g_ids = g_src.ids()
        if g_ids is None:
            raise InputError(f"{g_src.name}: has no ids to match the store's rows ({label} table {table!r}) by")
        lookup = {str(v): i for i, v in enumerate(g_ids)}
        rows = np.vectorize(lambda v: lookup.get(str(v), -1), otypes=[np.int64])(hits.ids)
    ks = tuple(k for k in (1, 5, 10) if k <= rows.shape[1])
    return {
        "nnn_store": recall_from_topk(rows, tr, ks),
        "store": {"uri": label, "table": table, "kind": meta.get("store_metric"), "query_seconds": round(seconds, 3)},
    }


def query_store(
    texts: str | list[str],
    store_uri: str,
    *,
    table: str,
    top_k: int = 10,
    model: Optional[str] = None,
    metric: str = "cosine",
    device: str = "auto",
    force: bool = False,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
) -> JobResult:
    """`nnn query TEXT --store URI --table T`: embed with the model the store records (or ``model``) and rank
    through the store's own search; ``summary["results"]`` as `nnn query` gives them."""
    from nnn_cli.embed.encoders import load_encoder
    from nnn_cli.embed.query import recorded_model_spec
    from nnn_cli.embed.run import normalise_rows

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not str(t).strip() for t in texts):
        raise ParameterError("give a non-empty query text")
    with closing(open_store(store_uri, io_timeout=io_timeout, storage_options=storage_options)) as store:
        meta = checked_meta(store, table, metric, force)
        name = model or meta.get("model")
        if not name:
            raise ParameterError(
                f"{where(store, table)}: records no model (not exported from `nnn embed` output); name it with --model"
            )
        encoder = load_encoder(recorded_model_spec(str(name)), device, "auto", int(meta.get("image_size") or 224))
        encoder.check_modality("text")
        vectors, good = normalise_rows(encoder.encode_texts([str(t) for t in texts]))
        if not good.all():
            raise InputError(
                f"model {encoder.name} returned a zero or non-finite vector for {texts[int(np.argmin(good))]!r}"
            )
        if vectors.shape[1] != int(meta.get("dim") or vectors.shape[1]):
            raise MismatchError(
                f"model {encoder.name} gives d={vectors.shape[1]} but {where(store, table)} holds d={meta['dim']}"
            )
        hits = store.search(table, np.asarray(vectors, dtype=np.float32), top_k, meta)
    results = [
        {
            "query_text": str(t),
            "model": encoder.name,
            "debiased": True,
            "results": [
                {
                    "rank": j + 1,
                    "index": int(hits.rows[i, j]),
                    "score": round(float(hits.scores[i, j]), 6),
                    "id": str(hits.ids[i, j]),
                }
                for j in range(hits.ids.shape[1])
            ],
        }
        for i, t in enumerate(texts)
    ]
    return JobResult({"results": results, "debiased": True, "model": encoder.name})
