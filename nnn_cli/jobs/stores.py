"""Vector stores in the use cases (biases in place go through `nnn bias`, :mod:`nnn_cli.jobs.bias`):
debiased queries through the store's own index (``nnn search --store``, ``nnn eval --store``,
``nnn query --store``) and its provenance (``nnn info URI --table T``).

Each use case takes a typed request and returns a typed result (its ``--json`` document from ``to_json``).
The store is opened by :func:`~nnn_cli.data.stores.open_store` and used through its interface only; the
mechanics live in :mod:`nnn_cli.scale.stores` and :mod:`nnn_cli.data.stores.records`: nothing here
depends on which store it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import numpy as np

from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.results import write_jsonl
from nnn_cli.data.stores import open_store
from nnn_cli.data.stores.common import SearchEffort, StoreHits, VectorStore, closing, search_effort
from nnn_cli.data.stores.records import check_dim, checked_meta, describe, hit_rows
from nnn_cli.errors import MismatchError, ParameterError
from nnn_cli.jobs.common import (
    NoteFn,
    Notes,
    PathLike,
    open_source,
)


@dataclass(frozen=True)
class StoreRef:
    """A store (its URI, credentials masked in every message) and the table a use case works on."""

    uri: str
    table: str
    io_timeout: Optional[float] = None
    storage_options: Optional[dict] = None

    def open(self, application: str = "nnn") -> VectorStore:
        return open_store(self.uri, io_timeout=self.io_timeout, storage_options=self.storage_options,
                          application=application)  # fmt: skip


def store_ref(uri: str, table: str, io_timeout: float | None = None, storage_options: dict | None = None) -> StoreRef:
    if not table:
        raise ParameterError("--store needs --table NAME (the table or collection to use)")
    return StoreRef(os.fspath(uri), table, io_timeout, storage_options)


def store_hits(
    ref: StoreRef, queries: np.ndarray, top_k: int, metric: str, force: bool, dim_of: str,
    effort: SearchEffort = SearchEffort(),
) -> tuple[StoreHits, dict, str]:  # fmt: skip
    """The store's answer for prepared query rows, after the stale guard and the dimension check."""
    with closing(ref.open()) as store:
        meta = checked_meta(store, ref.table, metric, force)
        check_dim(meta, int(queries.shape[1]), dim_of, f"{store.label} table {ref.table!r}")
        return store.search(ref.table, queries, top_k, meta, effort), meta, store.label


@dataclass(frozen=True)
class StoreSearchRequest:
    """A validated `nnn search --store URI --table T`: the hits go to JSON lines (a file or ``-``)."""

    queries: str
    store: StoreRef
    output: str
    top_k: int = 10
    metric: str = "cosine"
    force: bool = False
    query_ids: Optional[str] = None
    effort: SearchEffort = SearchEffort()  # --ef-search / --exact

    @classmethod
    def build(cls, queries: PathLike, store_uri: str, output: PathLike, *, table: str = "", top_k: int = 10,
              io_timeout: float | None = None, storage_options: dict | None = None, ef_search: Optional[int] = None,
              exact: bool = False, **options: Any) -> StoreSearchRequest:  # fmt: skip
        effort = search_effort(ef_search, exact)
        if top_k < 1:
            raise ParameterError(f"--top-k must be >= 1, got {top_k}")
        if str(output) != "-":
            if not str(output).lower().endswith(".jsonl"):
                raise ParameterError(f"{output}: with --store the results are JSON lines: use -o - or -o FILE.jsonl")
            check_output_path(output, [queries], (".jsonl",), "results output")
        ids = options.pop("query_ids", None)
        ref = store_ref(store_uri, table, io_timeout, storage_options)
        return cls(os.fspath(queries), ref, str(output), top_k, query_ids=None if ids is None else str(ids),
                   effort=effort, **options)  # fmt: skip


@dataclass
class StoreSearchResult:
    """What `nnn search --store` did; :meth:`to_json` is the ``--json`` document."""

    output: str
    store: str
    table: str
    n_queries: int
    top_k: int
    metric: str
    store_metric: str
    message: str
    notes: list[str] = field(default_factory=list)
    effort: SearchEffort = SearchEffort()

    def to_json(self) -> dict:
        keys = ("output", "store", "table", "n_queries", "top_k", "metric", "store_metric")
        return {**{key: getattr(self, key) for key in keys}, **self.effort.to_json()}

    @property
    def summary(self) -> dict:
        return {**self.to_json(), "message": self.message}

    @property
    def path(self) -> Optional[Path]:
        return None if self.output == "-" else Path(self.output)


def search_store(
    queries: PathLike, store_uri: str, output: PathLike, *, stream: TextIO | None = None,
    on_note: NoteFn | None = None, **options: Any,
) -> StoreSearchResult:  # fmt: skip
    """Send ``[q, -1]`` for each query to the store's own search and write the hits as `nnn search -o -` does
    (JSON lines; ``index`` is the export row, -1 for tables debiased in place).  ``options``:
    :meth:`StoreSearchRequest.build`'s."""
    return run_search_store(StoreSearchRequest.build(queries, store_uri, output, **options), stream, on_note)


def run_search_store(
    req: StoreSearchRequest, stream: TextIO | None = None, on_note: NoteFn | None = None
) -> StoreSearchResult:
    """Carry out a built :class:`StoreSearchRequest` (``stream``: where ``-o -`` writes)."""
    notes = Notes(on_note)
    if req.output == "-" and stream is None:
        raise ParameterError("output '-' needs a stream to write the JSON lines to")
    q_src = open_source(req.queries, "queries", notes, req.query_ids)
    hits, meta, label = store_hits(
        req.store, q_src.read(req.metric), req.top_k, req.metric, req.force, q_src.name, req.effort
    )
    sink: TextIO | str = req.output if stream is None or req.output != "-" else stream
    write_jsonl(sink, hits.scores, hits.rows, hits.ids, q_src.ids())
    top = int(hits.ids.shape[1])
    message = f"searched {label} table {req.store.table!r} for {q_src.n} queries (top-{top}, debiased)"
    return StoreSearchResult(req.output, label, req.store.table, q_src.n, top, req.metric,
                             meta.get("store_metric", "ip"), message, notes.lines, req.effort)  # fmt: skip


@dataclass
class StoreInfo:
    """`nnn info URI --table T`: rows, rows without a bias, the recorded provenance."""

    document: dict

    def to_json(self) -> dict:
        return dict(self.document)


def store_info(
    store_uri: str, table: str, *, io_timeout: float | None = None, storage_options: dict | None = None
) -> StoreInfo:
    """What ``nnn info URI --table T`` shows (credentials masked)."""
    ref = StoreRef(os.fspath(store_uri), table, io_timeout, storage_options)
    with closing(ref.open()) as store:
        return StoreInfo(describe(store, table))


@dataclass(frozen=True)
class StoreRecallRequest:
    """`nnn eval --store`: the files that give the truth, and the store whose index is measured."""

    queries: str
    gallery: str
    truth: str
    store: StoreRef
    metric: str = "cosine"
    force: bool = False
    query_ids: Optional[str] = None
    gallery_ids: Optional[str] = None
    efforts: tuple[SearchEffort, ...] = (SearchEffort(),)  # one measurement each: R@K against search effort


@dataclass
class StoreRecallResult:
    """Recall@1/5/10 through the store's own index; :meth:`to_json` is what `nnn eval --json` adds.
    ``recall``/``seconds``/``effort`` are the last effort measured; ``sweep`` has one entry per effort."""

    recall: dict
    store: str
    table: str
    store_metric: Any
    seconds: float
    effort: SearchEffort = SearchEffort()
    sweep: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        about = {"uri": self.store, "table": self.table, "kind": self.store_metric, "query_seconds": self.seconds,
                 **self.effort.to_json()}  # fmt: skip
        if len(self.sweep) > 1:
            about["sweep"] = self.sweep
        return {"nnn_store": self.recall, "store": about}


def store_recall(
    queries: PathLike, gallery: PathLike, truth: PathLike, store_uri: str, *, table: str = "",
    io_timeout: float | None = None, storage_options: dict | None = None,
    ef_search: int | list[int] | tuple[int, ...] | None = None, exact: bool = False, **options: Any,
) -> StoreRecallResult:  # fmt: skip
    """Recall@1/5/10 of the debiased ranking the store's own index returns (its ANN index, where it has one),
    to set beside exact NNN: what the index costs.  ``ef_search``: one search effort or several (one
    measurement each, in the order given: R@K against effort); ``exact``: the store's exact scan.
    ``options``: :class:`StoreRecallRequest`'s fields."""
    paths = {key: (None if v is None else os.fspath(v)) for key, v in options.items() if key.endswith("_ids")}
    ref = store_ref(store_uri, table, io_timeout, storage_options)
    if ef_search is None or isinstance(ef_search, int):
        efforts: tuple[SearchEffort, ...] = (search_effort(ef_search, exact),)
    else:
        if not ef_search:
            raise ParameterError("--ef-search needs at least one value")
        efforts = tuple(search_effort(e, exact) for e in ef_search)
    req = StoreRecallRequest(os.fspath(queries), os.fspath(gallery), os.fspath(truth), ref,
                             **{**options, **paths, "efforts": efforts})  # fmt: skip
    return run_store_recall(req)


def run_store_recall(req: StoreRecallRequest) -> StoreRecallResult:
    """Hits map back to gallery rows by the export's row number, or by id (the gallery's ids)."""
    from nnn_cli.core.metrics import recall_from_topk
    from nnn_cli.data.tables import read_truth

    notes = Notes(None)
    q_src = open_source(req.queries, "queries", notes, req.query_ids)
    g_src = open_source(req.gallery, "gallery", notes, req.gallery_ids)
    check_same_dim(q_src, g_src)
    tr = read_truth(req.truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
    queries = q_src.read(req.metric)
    sweep: list[dict] = []
    for effort in req.efforts:
        t0 = time.perf_counter()
        hits, meta, label = store_hits(req.store, queries, 10, req.metric, req.force, q_src.name, effort)
        seconds = round(time.perf_counter() - t0, 3)
        place = f"{label} table {req.store.table!r}"
        if int(meta.get("n_gallery", g_src.n)) != g_src.n:
            raise MismatchError(f"{place}: holds {meta['n_gallery']} rows, {g_src.name} has {g_src.n}")
        rows = hit_rows(hits.rows, hits.ids, g_src.ids(), g_src.name, place)
        ks = tuple(k for k in (1, 5, 10) if k <= rows.shape[1])
        recall = recall_from_topk(rows, tr, ks)
        sweep.append({**effort.to_json(), **recall, "query_seconds": seconds})
    return StoreRecallResult(recall, label, req.store.table, meta.get("store_metric"), seconds, effort, sweep)


@dataclass(frozen=True)
class StoreQueryRequest:
    """`nnn query TEXT --store URI --table T`: texts embedded with the recorded model (or ``model``)."""

    texts: tuple[str, ...]
    store: StoreRef
    top_k: int = 10
    model: Optional[str] = None
    metric: str = "cosine"
    device: str = "auto"
    force: bool = False
    effort: SearchEffort = SearchEffort()  # --ef-search / --exact


@dataclass
class StoreQueryResult:
    """The debiased ranking per text, as `nnn query` gives it; :meth:`to_json` holds ``results``."""

    results: list[dict]
    model: str

    def to_json(self) -> dict:
        return {"results": self.results, "debiased": True, "model": self.model}

    @property
    def summary(self) -> dict:
        return self.to_json()


def query_store(
    texts: str | list[str], store_uri: str, *, table: str = "", io_timeout: float | None = None,
    storage_options: dict | None = None, ef_search: Optional[int] = None, exact: bool = False, **options: Any,
) -> StoreQueryResult:  # fmt: skip
    """Embed with the model the store records (or ``model``) and rank through the store's own search."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not str(t).strip() for t in texts):
        raise ParameterError("give a non-empty query text")
    effort = search_effort(ef_search, exact)
    ref = store_ref(store_uri, table, io_timeout, storage_options)
    return run_query_store(StoreQueryRequest(tuple(str(t) for t in texts), ref, effort=effort, **options))


def run_query_store(req: StoreQueryRequest) -> StoreQueryResult:
    """Carry out a built :class:`StoreQueryRequest`."""
    with closing(req.store.open()) as store:
        meta = checked_meta(store, req.store.table, req.metric, req.force)
        name = req.model or meta.get("model")
        if not name:
            raise ParameterError(
                f"{store.label} table {req.store.table!r}: records no model (not exported from `nnn embed` output); "
                "name it with --model"
            )
        encoder, vectors = _embed_texts(str(name), req, int(meta.get("image_size") or 224))
        check_dim(
            meta, int(vectors.shape[1]), f"model {encoder.name} gives", f"{store.label} table {req.store.table!r}"
        )
        hits = store.search(req.store.table, vectors, req.top_k, meta, req.effort)
    return StoreQueryResult([_ranking(t, encoder.name, hits, i) for i, t in enumerate(req.texts)], encoder.name)


def _embed_texts(name: str, req: StoreQueryRequest, image_size: int) -> tuple[Any, np.ndarray]:
    from nnn_cli.embed.encoders import load_encoder
    from nnn_cli.embed.query import recorded_model_spec
    from nnn_cli.embed.run import normalise_rows

    encoder = load_encoder(recorded_model_spec(name), req.device, "auto", image_size)
    encoder.check_modality("text")
    vectors, good = normalise_rows(encoder.encode_texts(list(req.texts)))
    if not good.all():
        from nnn_cli.errors import InputError

        raise InputError(
            f"model {encoder.name} returned a zero or non-finite vector for {req.texts[int(np.argmin(good))]!r}"
        )
    return encoder, np.asarray(vectors, dtype=np.float32)


def _ranking(text: str, model: str, hits: StoreHits, i: int) -> dict:
    ranked = [
        {"rank": j + 1, "index": int(hits.rows[i, j]), "score": round(float(hits.scores[i, j]), 6),
         "id": str(hits.ids[i, j])}
        for j in range(hits.ids.shape[1])
    ]  # fmt: skip
    return {"query_text": text, "model": model, "debiased": True, "results": ranked}
