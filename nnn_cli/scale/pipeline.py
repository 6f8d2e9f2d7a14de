"""One pipeline for the blocked runs: sources -> plan -> ``scheduler.run(plan, tasks)`` -> ``sink.commit``.

Every function here takes opened, validated sources (:class:`~nnn_cli.data.contracts.Source`), a plan
(:mod:`nnn_cli.scale.grid`), a scheduler (:mod:`nnn_cli.scale.scheduler`: local threads or Ray, chosen by
the caller through :func:`~nnn_cli.scale.scheduler.make_scheduler`) and a sink
(:mod:`nnn_cli.data.sinks`: a bias file or a run folder).  None of them knows which scheduler or sink it got:

1. ``sink.check(resume)``: the target is writable and reachable, an earlier run refused unless resumed
   (writes nothing);
2. in the scheduler's session (a cluster reachable): content hashes of the gallery blocks and reference
   partitions (a pass of parallel reads, the run's input fingerprints), then ``sink.kept_blocks``: what a
   resumed run keeps after verifying it;
3. the block tasks (:mod:`nnn_cli.scale.tasks`); each finished block is recorded by the sink;
4. ``sink.commit``; on bad input (an :class:`~nnn_cli.errors.NNNError` from a task) ``sink.abort()`` first.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnn_cli.core.nnn import check_same_dims
from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE, ProgressFn
from nnn_cli.data.contracts import BlockRecord
from nnn_cli.data.sinks import FORMAT
from nnn_cli.errors import InputError, MismatchError, NNNError, ParameterError
from nnn_cli.scale.grid import Plan, make_plan, round_up
from nnn_cli.scale.scheduler import BlockTask, Call, Scheduler
from nnn_cli.scale.tasks import (
    fingerprint_task,
    first,
    index_topk_task,
    merge_bias_task,
    merge_search_task,
    merge_update_task,
    partial_search_task,
    partial_topk_task,
)


@dataclass(frozen=True)
class BiasParams:
    """The bias parameters, validated where the request was built (taken as given here)."""

    alpha: float
    k: int
    metric: str
    save_topk: bool = True

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "k": self.k, "metric": self.metric, "save_topk": self.save_topk}


@dataclass
class RunStats:
    """What a blocked run did (the job turns it into its typed result)."""

    plan: dict
    blocks: int
    blocks_computed: int
    blocks_skipped: int
    tasks: list[dict] = field(default_factory=list)
    merge_seconds: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    index: dict | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        t = self.tasks
        out = {
            "plan": self.plan,
            "blocks": self.blocks,
            "blocks_computed": self.blocks_computed,
            "blocks_skipped": self.blocks_skipped,
            "tasks_run": len(t),
            "stage_seconds": self.stage_seconds,
            "task_seconds": [x["seconds"] for x in t],
            "task_bytes_read": [x["bytes_read"] for x in t],
            "task_flop": [x["flop"] for x in t if "flop" in x],
            "task_devices": [x["cuda_visible_devices"] for x in t],
            "task_windows": [(x["pid"], x["t0"], x["t1"], x["cuda_visible_devices"]) for x in t],
            "merge_seconds": self.merge_seconds,
            **self.extra,
        }
        if self.index is not None:
            out["index"] = self.index
            out["index_rows_recomputed_exactly"] = sum(x.get("rows_recomputed_exactly", 0) for x in t)
            out["index_deserializations"] = sum(bool(x.get("index_deserialized")) for x in t)
        return out


def fingerprints(scheduler: Scheduler, handle: Any, spans: Sequence[tuple[int, int]]) -> list[str]:
    """Content hashes of ``spans`` of a source, read in parallel by the scheduler."""
    out: dict[int, str] = {}
    tasks = [BlockTask(i, (Call(fingerprint_task, (handle, a, b)),), Call(first)) for i, (a, b) in enumerate(spans)]
    scheduler.run(tasks, out.__setitem__)
    return [out[i] for i in range(len(spans))]


def input_part(src: Any, step: int, hashes: list[str], key: str) -> dict:
    """One part of a run's input: where, its rows, and the content hash of each ``step``-row span."""
    return {
        "path": src.name,
        "rows": int(src.n),
        "dim": int(src.dim),
        "dtype": np.dtype(src.dtype).str,
        key: int(step),
        "fingerprints": hashes,
    }


def _on_block(sink: Any, records: dict, hashes: dict[int, str]) -> Callable[[int, dict], None]:
    def done(b: int, out: dict) -> None:
        rec: BlockRecord = out.pop("record", None) or sink.put_block(b, tuple(out["rows"]), out.pop("arrays"))
        rec.inputs["gallery"] = hashes.get(b, "")
        rec.info.update(task_seconds=round(sum(t["seconds"] for t in out["tasks"]), 4))
        rec.info.update(devices=sorted({str(t["cuda_visible_devices"]) for t in out["tasks"]}))
        sink.record(rec)
        records[b] = out

    return done


def bias_tasks(
    blocks: Sequence[tuple[int, int, int]],
    partitions: Sequence[tuple[Any, int, int]],
    gallery: Any,
    params: BiasParams,
    sink: Any,
    gpus: bool,
    delay: float = 0.0,
    row_offset: int = 0,
) -> list[BlockTask]:
    """Per block ``(b, g0, g1)`` of ``gallery``: one part per reference partition ``(handle, r0, r1)``, then
    the merge writing block ``b`` as global rows ``[row_offset + g0, row_offset + g1)``."""
    p = params
    return [
        BlockTask(
            b,
            tuple(
                Call(partial_topk_task, (gallery, g0, g1, ref, r0, r1, p.k, p.metric, float(gpus), delay), gpu=gpus)
                for ref, r0, r1 in partitions
            ),
            Call(merge_bias_task, (b, row_offset + g0, row_offset + g1, p.alpha, p.k, sink, p.save_topk)),
        )
        for b, g0, g1 in blocks
    ]


def run_bias(
    gallery: Any,
    reference: Any,
    params: BiasParams,
    plan: Plan,
    scheduler: Scheduler,
    sink: Any,
    *,
    resume: bool = False,
    gpus: bool = False,
    index: Any = None,
    progress: ProgressFn | None = None,
    delay: float = 0.0,
) -> RunStats:
    """A fresh (or resumed) bias run: every gallery block's top-k against every reference partition."""
    t0 = time.time()
    old = sink.check(resume)
    try:
        with scheduler:
            t_ready = time.time()
            g_h, r_h = scheduler.share(gallery), scheduler.share(reference)
            g_fp = fingerprints(scheduler, g_h, plan.blocks)
            r_fp = fingerprints(scheduler, r_h, plan.partitions)
            header = {
                "format": FORMAT,
                "kind": "bias",
                "engine": scheduler.name,
                "inputs": {
                    "gallery": {"parts": [input_part(gallery, plan.block_rows, g_fp, "block_rows")]},
                    "reference": {"parts": [input_part(reference, plan.partition_rows, r_fp, "partition_rows")]},
                },
                "params": {**params.as_dict(), **({"index": index.options} if index is not None else {})},
                "plan": plan.as_dict(),
            }
            hashes = dict(enumerate(g_fp))
            kept = sink.kept_blocks(old, header, hashes)
            todo = [(b, g0, g1) for b, (g0, g1) in enumerate(plan.blocks) if b not in kept]
            if hasattr(sink, "allocate"):
                sink.allocate(gallery.n, params.k if params.save_topk else None)
            records: dict = {}
            t_planned = time.time()
            index_record = None
            if index is not None:
                index_record, tasks = _index_tasks(
                    scheduler, index, todo, g_h, r_h, gallery, reference, params, sink, old, delay
                )
            else:
                parts = [(r_h, r0, r1) for r0, r1 in plan.partitions]
                tasks = bias_tasks(todo, parts, g_h, params, sink, gpus, delay)

            def body() -> None:
                scheduler.run(tasks, _on_block(sink, records, hashes), progress, len(plan.blocks), len(kept))
                sink.commit({"index": index_record} if index_record else {})

            body()
    except NNNError:  # bad input found by a task: remove what this run wrote (after its tasks ended)
        sink.abort()
        raise
    t_end = time.time()
    return RunStats(
        plan.as_dict(),
        len(plan.blocks),
        len(records),
        len(kept),
        [t for r in records.values() for t in r["tasks"]],
        [r["merge_seconds"] for r in records.values()],
        {"start": t_ready - t0, "plan": t_planned - t_ready, "compute": t_end - t_planned, "total": t_end - t0},
        index_record,
    )


@dataclass
class IndexSpec:
    """An approximate index over the reference for a blocked run: the options asked for and the choice made."""

    options: dict
    choice: Any


def _index_tasks(
    scheduler: Scheduler, index: IndexSpec, todo, g_h, r_h, gallery, reference, params: BiasParams, sink, old, delay
) -> tuple[dict, list[BlockTask]]:
    """Build the index once on the driver (or reload the run's), ship it once, one task per block through it."""
    blob, record = _driver_index(gallery, reference, params, index.choice, sink, (old or {}).get("index"))
    blob_h, key = scheduler.share(blob), record["index_sha"]  # once: every task on a node maps one copy
    probing = (
        {
            "nprobe": int(record["index_probe_max"]),
            "gap": float(record["index_probe_gap"]),
            "flat": bool(record.get("index_probe_flat")),
            "prefix": record.get("index_probe_prefix"),
        }
        if record.get("index_probe_gap") is not None
        else None
    )  # a tuned probe gap (recorded, so a resumed run probes as the first did)
    tasks = [
        BlockTask(
            b,
            (Call(index_topk_task, (key, blob_h, g_h, g0, g1, r_h, params.k, params.metric, delay, probing)),),
            Call(merge_bias_task, (b, g0, g1, params.alpha, params.k, sink, params.save_topk)),
        )
        for b, g0, g1 in todo
    ]
    return record, tasks


def _driver_index(
    gallery, reference, params: BiasParams, choice, sink, resumed: dict | None
) -> tuple[np.ndarray, dict]:
    from nnn_cli.scale.device import faiss_module
    from nnn_cli.scale.index.steps import prepare_reference_index

    stored = sink.load_extra("index.faiss") if resumed else None
    if stored is not None:
        blob = np.frombuffer(stored, dtype=np.uint8)
        if hashlib.blake2b(stored, digest_size=16).hexdigest() != resumed.get("index_sha"):  # type: ignore[union-attr]
            raise MismatchError(f"{sink.target}: index.faiss is not the index this run was started with; start anew")
        return blob, dict(resumed)  # type: ignore[arg-type]
    t0 = time.time()
    built, _, info = prepare_reference_index(gallery, reference, params.k, params.metric, choice)
    blob = faiss_module().serialize_index(built)
    sink.save_extra("index.faiss", blob.tobytes())
    record = {
        **choice.to_dict(),
        **info,
        "index_file": "index.faiss",
        "index_bytes": int(blob.nbytes),
        "index_sha": hashlib.blake2b(blob.tobytes(), digest_size=16).hexdigest(),
        "index_driver_seconds": round(time.time() - t0, 3),
    }
    return blob, record


def index_spec(options: dict | None, gallery: Any, reference: Any, k: int) -> IndexSpec | None:
    """The index of a blocked bias run (None: exact).  Quantized indexes are refused: their tasks would need
    the float32 reference to re-score."""
    if not options or (options.get("index") or "flat") == "flat":
        return None
    from nnn_cli.scale.index.choose import choose_index

    opts = {key: options.get(key) for key in ("index", "nlist", "nprobe", "ef_search", "recall")}
    choice = choose_index(
        str(opts["index"]),
        gallery.n,
        reference.n,
        reference.dim,
        k,
        opts["nlist"],
        opts["nprobe"],
        opts["ef_search"],
        opts["recall"],
    )
    if choice.exact:  # auto chose the exact path
        return None
    if choice.kind == "factory":
        from nnn_cli.scale.index.build import new_index
        from nnn_cli.scale.index.steps import stores_exact_vectors

        if not stores_exact_vectors(new_index(choice, reference.dim)):
            raise ParameterError(
                f"--index {choice.factory!r} stores quantized codes, which need the float32 reference in every "
                "task to re-score: use an index storing float32 vectors (ivf, hnsw, IVFn,Flat, HNSWm) for a "
                "blocked run, or write a bias file with --engine local"
            )
    return IndexSpec(opts, choice)


def index_plan(n_gallery: int, n_reference: int, block_rows: int | None, kind: str) -> Plan:
    """One task per gallery block (the whole reference is in the index).  ``kind`` is the chosen index's
    (``IndexSpec.choice.kind``): IVF and factory blocks lie on list-major's row grid
    (:data:`~nnn_cli.scale.index.listscan.LIST_ROW_BLOCK`: a block's GEMMs are those of a local run, so the
    bytes are), HNSW blocks on :data:`~nnn_cli.core.topk.QUERY_TILE` (HNSW searches row by row)."""
    from nnn_cli.scale.grid import DEFAULT_BLOCK_ROWS
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK

    grid = QUERY_TILE if kind == "hnsw" else LIST_ROW_BLOCK
    rows = min(block_rows or DEFAULT_BLOCK_ROWS, round_up(n_gallery, grid))
    return make_plan(n_gallery, n_reference, rows, round_up(n_reference, DATABASE_TILE), block_multiple=grid)


# ---------------------------------------------------------------------------
# Incremental: --append-to (new gallery rows as new blocks), --update --reference-add (new queries)
# ---------------------------------------------------------------------------
def _check_not_added(parts: list[dict], new: dict, what: str, target: str) -> None:
    """Refuse to add the same rows twice (a cron job re-run): they would be counted twice."""
    for p in parts:
        if p["rows"] == new["rows"] and p["fingerprints"] == new["fingerprints"]:
            raise ParameterError(
                f"{new['path']}: these {new['rows']} rows are already part of {target}'s {what} "
                f"(added from {p['path']}); nothing to do"
            )


@dataclass(frozen=True)
class PartView:
    """Where the rows of one recorded input part are: ``handle`` rows ``[offset, offset + rows)``."""

    handle: Any
    offset: int
    rows: int


def part_views(
    given: Any, parts: list[dict], open_part: Callable[[str, str], Any], scheduler: Scheduler, step_key: str,
    what: str, target: str,
) -> list[PartView]:  # fmt: skip
    """The recorded parts of a run's ``what`` input, verified by content hash span by span: ``given`` holds them
    all (concatenated, as an HDF5 bias file's update takes them) or is part 0, later parts reopened from their
    recorded paths by ``open_part``."""
    total = sum(int(p["rows"]) for p in parts)
    whole = len(parts) > 1 and given.n == total
    if whole:
        h = scheduler.share(given)
        starts = np.cumsum([0] + [int(p["rows"]) for p in parts])
        views = [(h, given, int(starts[i])) for i in range(len(parts))]
    else:
        srcs = [given] + [open_part(p["path"], f"{what} part {i + 1}") for i, p in enumerate(parts[1:])]
        views = [(scheduler.share(src), src, 0) for src in srcs]
    out = []
    for i, (p, (h, src, off)) in enumerate(zip(parts, views)):
        rows = int(p["rows"])
        spans = [(off + a, off + b) for a, b in _spans(rows, int(p[step_key]))]
        ok = src.dim == int(p["dim"]) and (whole or src.n == rows)
        if not ok or fingerprints(scheduler, h, spans) != p["fingerprints"]:
            where = f"the given {what}" if i == 0 or whole else f"{p['path']} ({what} part {i}, added later)"
            raise MismatchError(
                f"{target}: {where} is not the {what} the run was made with (rows {src.n} vs {total}, or its "
                "content changed); pass the same inputs or recompute into a new folder"
            )
        out.append(PartView(h, off, rows))
    return out


def finished_run(sink: Any, what: str, alpha: float | None, k: int | None, metric: str | None) -> dict:
    """The finished, exact run in ``sink`` (its manifest), checked against the options given."""
    from nnn_cli.data.provenance import same_number
    from nnn_cli.data.sinks import open_run

    _, m = open_run(sink.url, sink.storage_options)
    if m["params"].get("index"):
        raise ParameterError(f"{sink.url}: made through an index; {what} is exact and needs an exact run")
    p = m["params"]
    for name, given in (("alpha", alpha), ("k", k), ("metric", metric)):
        stored = p[name]
        if given is not None and (given != stored if name == "metric" else not same_number(given, stored)):
            raise MismatchError(
                f"{sink.url}: the run was made with {name}={stored!r}, not {given!r}; drop the option "
                "(it is taken from the manifest) or recompute into a new folder"
            )
    return m


def run_append(
    new: Any,
    reference: Any,
    open_part: Callable[[str, str], Any],
    sink: Any,
    scheduler: Scheduler,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    gpus: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    """Append ``new`` gallery rows to a finished exact run as new blocks, each against every reference part
    (``reference`` is part 0; later parts, added by --update, are reopened by ``open_part(path, label)``);
    then ONE manifest rewrite (the commit) records the blocks and the new gallery part."""
    m = finished_run(sink, "--append-to", alpha, k, metric)
    params = BiasParams(m["params"]["alpha"], m["params"]["k"], m["params"]["metric"], m["params"]["save_topk"])
    plan, rows, step = m["plan"], int(m["plan"]["block_rows"]), int(m["plan"]["partition_rows"])
    n_old, b_old = int(plan["n_rows"]), int(plan["blocks"])
    spans = [(s, min(new.n, s + rows)) for s in range(0, new.n, rows)]
    ref_parts = m["inputs"]["reference"]["parts"]
    check_same_dims(
        [
            (f"{new.label} {new.name}", new.dim),
            (f"the run's reference {ref_parts[0]['path']}", int(ref_parts[0]["dim"])),
        ]
    )
    with scheduler:
        n_h = scheduler.share(new)
        views = part_views(reference, ref_parts, open_part, scheduler, "partition_rows", "reference", sink.url)
        part = input_part(new, rows, fingerprints(scheduler, n_h, spans), "block_rows")
        _check_not_added(m["inputs"]["gallery"]["parts"], part, "gallery", sink.url)
        sink.manifest = m
        blocks = [(b_old + j, s0, s1) for j, (s0, s1) in enumerate(spans)]
        partitions = [(v.handle, v.offset + r0, v.offset + r1) for v in views for r0, r1 in _spans(v.rows, step)]
        tasks = bias_tasks(blocks, partitions, n_h, params, sink, gpus, row_offset=n_old)
        records: dict = {}
        fp = {b: part["fingerprints"][j] for j, (b, _, _) in enumerate(blocks)}
        scheduler.run(tasks, _on_block(_Deferred(sink), records, fp), progress)
    m["inputs"]["gallery"]["parts"].append(part)
    plan.update(n_rows=n_old + new.n, blocks=b_old + len(blocks), tasks=plan["tasks"] + len(blocks) * len(partitions))
    m.setdefault("history", []).append({"op": "append", "rows": [n_old, n_old + new.n], "time": time.time()})
    sink.commit({})
    return {
        "n_added": new.n,
        "n_gallery": n_old + new.n,
        "blocks_added": len(blocks),
        "tasks_run": len(tasks) * len(partitions),
        **params.as_dict(),
    }


def run_add_reference(
    gallery: Any,
    open_part: Callable[[str, str], Any],
    new: Any,
    sink: Any,
    scheduler: Scheduler,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    gpus: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    """Fold new reference queries into a finished exact run saved with top-k: one part per (block, new
    partition), merged with the block's verified stored top-k into files of a new generation; then ONE
    manifest rewrite switches to them (the commit); the replaced files are removed after."""
    m = finished_run(sink, "--update", alpha, k, metric)
    if not m["params"].get("save_topk", True):
        raise ParameterError(
            f"{sink.url}: the run was made without top-k (--no-store-topk); recompute with all the queries"
        )
    params = BiasParams(m["params"]["alpha"], m["params"]["k"], m["params"]["metric"], True)
    g_parts, step = m["inputs"]["gallery"]["parts"], int(m["plan"]["partition_rows"])
    check_same_dims(
        [(f"{new.label} {new.name}", new.dim), (f"the run's gallery {g_parts[0]['path']}", int(g_parts[0]["dim"]))]
    )
    with scheduler:
        views = part_views(gallery, g_parts, open_part, scheduler, "block_rows", "gallery", sink.url)
        q_h = scheduler.share(new)
        part = input_part(new, step, fingerprints(scheduler, q_h, _spans(new.n, step)), "partition_rows")
        _check_not_added(m["inputs"]["reference"]["parts"], part, "reference", sink.url)
        sink.manifest, sink.generation = m, int(m.get("generation", 0)) + 1
        tasks, replaced = _update_tasks(m, sink, views, q_h, new.n, step, params, gpus)
        records: dict = {}
        fp = {b: m["blocks_done"][str(b)].get("inputs", {}).get("gallery", "") for b in range(int(m["plan"]["blocks"]))}
        scheduler.run(tasks, _on_block(_Deferred(sink), records, fp), progress)
    n_ref = sum(int(p["rows"]) for p in m["inputs"]["reference"]["parts"])
    m["inputs"]["reference"]["parts"].append(part)
    m["generation"] = sink.generation
    m.setdefault("history", []).append({"op": "reference-add", "rows": [n_ref, n_ref + new.n], "time": time.time()})
    sink.commit({})
    sink.remove(replaced)
    return {
        "n_added": new.n,
        "n_gallery": int(m["plan"]["n_rows"]),
        "n_reference": n_ref + new.n,
        "blocks_rewritten": len(tasks),
        "generation": sink.generation,
        **params.as_dict(),
    }


def _update_tasks(m, sink, views, q_h, n_new, step, params, gpus) -> tuple[list[BlockTask], list[str]]:
    starts = np.cumsum([0] + [v.rows for v in views])
    news = _spans(n_new, step)
    tasks, replaced = [], []
    for b in range(int(m["plan"]["blocks"])):
        rec = sink.verify_block(b, m["blocks_done"][str(b)], "topk")
        g0, g1 = rec.rows
        i = int(np.searchsorted(starts, g0, side="right")) - 1
        s = int(starts[i]) - views[i].offset  # global row g is row g - s of its part's source
        parts = tuple(
            Call(
                partial_topk_task,
                (views[i].handle, g0 - s, g1 - s, q_h, r0, r1, params.k, params.metric, float(gpus)),
                gpu=gpus,
            )
            for r0, r1 in news
        )
        tasks.append(BlockTask(b, parts, Call(merge_update_task, (b, g0, g1, params.alpha, params.k, sink, rec))))
        replaced += list(rec.files.values())
    return tasks, replaced


class _Deferred:
    """A sink view whose ``record`` only keeps the block in the manifest in memory: an incremental run commits
    once at the end (a crash before it leaves the run as it was)."""

    def __init__(self, sink: Any):
        self._sink = sink

    def put_block(self, b: int, rows: tuple, arrays: dict) -> BlockRecord:
        return self._sink.put_block(b, rows, arrays)

    def record(self, rec: BlockRecord) -> None:
        self._sink.record(rec, write=False)


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(0, n, step)]


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------
def search_plan(n_queries: int, n_gallery: int, block_rows: int | None, partition_rows: int | None) -> Plan:
    from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK
    from nnn_cli.scale.grid import DEFAULT_PARTITION_ROWS

    return make_plan(
        n_queries,
        n_gallery,
        min(block_rows or DEFAULT_QUERY_BLOCK, round_up(n_queries, DEFAULT_QUERY_BLOCK)),
        min(partition_rows or DEFAULT_PARTITION_ROWS, round_up(n_gallery, DATABASE_TILE)),
        block_multiple=DEFAULT_QUERY_BLOCK,
    )


def run_search(
    queries: Any,
    gallery: Any,
    bias: np.ndarray | None,
    top_k: int,
    metric: str,
    plan: Plan,
    scheduler: Scheduler,
    *,
    gpus: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery rows per query by ``q.r - b(r)`` (plain ``q.r`` when ``bias`` is None), query
    blocks x gallery partitions, merged by (score desc, index asc): the in-memory result byte for byte."""
    if bias is not None and bias.shape != (gallery.n,):
        raise InputError(
            f"the bias has {bias.shape[0] if bias.ndim else 0} entries but {gallery.name} has {gallery.n} rows"
        )
    top_k = min(int(top_k), gallery.n)
    scores = np.empty((queries.n, top_k), dtype=np.float32)
    indices = np.empty((queries.n, top_k), dtype=np.int64)
    with scheduler:
        q_h, g_h = scheduler.share(queries), scheduler.share(gallery)
        b_h = [None if bias is None else scheduler.share(bias[r0:r1]) for r0, r1 in plan.partitions]
        tasks = [
            BlockTask(
                i,
                tuple(
                    Call(partial_search_task, (q_h, q0, q1, g_h, r0, r1, b_h[j], top_k, metric, float(gpus)), gpu=gpus)
                    for j, (r0, r1) in enumerate(plan.partitions)
                ),
                Call(merge_search_task, (top_k,)),
            )
            for i, (q0, q1) in enumerate(plan.blocks)
        ]

        def done(i: int, result: tuple) -> None:
            q0, q1 = plan.blocks[i]
            scores[q0:q1], indices[q0:q1] = result

        scheduler.run(tasks, done, progress)
    return scores, indices


__all__ = [
    "BiasParams",
    "IndexSpec",
    "RunStats",
    "bias_tasks",
    "fingerprints",
    "index_plan",
    "index_spec",
    "run_add_reference",
    "run_append",
    "run_bias",
    "run_search",
    "search_plan",
]
