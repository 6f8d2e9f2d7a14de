"""`--append-to` / `--update --reference-add` on a `--engine ray` run folder: new blocks, or each block's stored
top-k merged with the new queries' (exact, byte-identical to a fresh run), committed by one manifest rewrite."""

from __future__ import annotations

import contextlib
import os
import time

from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE, ProgressFn
from nnn_cli.data import objstore
from nnn_cli.data.manifest import MANIFEST, missing_blocks, read_manifest
from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.scale.ray.cluster import DEFAULT_IO_TIMEOUT
from nnn_cli.scale.ray.session import (
    _input_record,
    _run_windowed,
    _session_window,
    open_input,
    ray_session,
    task_options,
)
from nnn_cli.scale.ray.tasks import merge_bias_task, merge_update_task, partial_topk_task

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE  # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE  # reference rows fetched per ranged read inside a task


@contextlib.contextmanager
def run_lock(run_url: str, storage_options: dict | None, wait: float):
    """The exclusive lock of a local run folder (``.manifest.json.lock``); URLs on object stores get none:
    concurrent writers of one run there are not serialized."""
    fs, path = objstore.url_fs(run_url, storage_options)
    if not objstore.is_local(fs):
        yield None
        return
    from nnn_cli.data.locks import exclusive_lock

    with exclusive_lock(os.path.join(path, MANIFEST), wait, "bias run folder") as held:
        yield held


def _complete_manifest(run_url: str, so: dict, what: str) -> dict:
    m = read_manifest(run_url, so)
    n_blocks = m["plan"]["blocks"]
    missing = missing_blocks(m)
    if missing:
        raise InputError(
            f"{run_url}: unfinished ({len(missing)} of {n_blocks} blocks not done): finish it with "
            f"--resume before {what}"
        )
    if m.get("index"):  # an index was used (not: --index auto that chose the exact path)
        raise ParameterError(
            f"{run_url}: made through an index ({m['index'].get('index_description')}); "
            f"{what} is exact and needs an exact run: recompute it into a new folder"
        )
    return m


def _check_run_params(m: dict, run_url: str, alpha, k, metric) -> None:
    from nnn_cli.data.provenance import same_number

    p = m["params"]
    for name, given, stored in (("alpha", alpha, p["alpha"]), ("k", k, p["k"]), ("metric", metric, p["metric"])):
        if given is not None and (given != stored if name == "metric" else not same_number(given, stored)):
            raise MismatchError(
                f"{run_url}: the run was made with {name}={stored!r}, not {given!r}; drop the "
                "option (it is taken from the manifest) or recompute into a new folder"
            )


def _open_parts(records: list[dict], given, so: dict, what: str, run_url: str) -> list[tuple[objstore.UrlSource, int]]:
    """[(source, first global row)] for an input recorded in parts: part 0 is ``given`` (checked against its
    record), later parts (added by --append-to / --update) are reopened from their recorded URLs and checked."""
    out, start = [], 0
    for i, rec in enumerate(records):
        src = given if i == 0 else open_input(rec["url"], so, f"{what} part {i}")
        fp = src.cheap_fingerprint()
        if list(src.shape) != list(rec["shape"]) or fp != rec["fingerprint"]:
            where = "the given " + what if i == 0 else f"{rec['url']} ({what} part {i}, added later)"
            raise MismatchError(
                f"{run_url}: {where} is not the {what} the run was made with (shape "
                f"{list(src.shape)} vs {rec['shape']}, sampled fingerprint {fp[:12]} vs "
                f"{rec['fingerprint'][:12]})"
            )
        out.append((src, start))
        start += src.n
    return out


def ray_append(
    new_items_url,
    reference_url,
    run_url: str,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    address: str | None = None,
    gpus_per_task: float = 0,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    wait: float = 10.0,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float = DEFAULT_IO_TIMEOUT,
    **_ignored,
) -> dict:
    """Append new gallery rows to a finished exact run (``run_url``) as new blocks: each new block's top-k
    against every reference part (exactly as a fresh run computes it), then ONE manifest rewrite records the
    blocks and the new gallery part (its URL, shape and fingerprint).  Old blocks are not touched."""
    t_start = time.time()
    so = dict(storage_options or {})
    with run_lock(run_url, so, wait):
        m = _complete_manifest(run_url, so, "--append-to")
        _check_run_params(m, run_url, alpha, k, metric)
        p, plan = m["params"], m["plan"]
        alpha, k, metric = p["alpha"], p["k"], p["metric"]
        new = open_input(new_items_url, so, "new gallery items")
        refs = _open_parts(
            [m["inputs"]["reference"]] + m["inputs"].get("reference_parts", []),
            open_input(reference_url, so, "reference"),
            so,
            "reference",
            run_url,
        )
        if new.dim != refs[0][0].dim:
            raise MismatchError(f"dimension mismatch: new items d={new.dim}, reference d={refs[0][0].dim}")
        n_old, b_old, rows = plan["n_rows"], plan["blocks"], plan["block_rows"]
        new_blocks = [(b_old + j, s, min(new.n, s + rows)) for j, s in enumerate(range(0, new.n, rows))]
        parts = [
            (src, r0, min(src.n, r0 + plan["partition_rows"]))
            for src, _ in refs
            for r0 in range(0, src.n, plan["partition_rows"])
        ]
        records: dict = {}
        with ray_session(address, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout) as ray:
            part_fn = ray.remote(partial_topk_task).options(**task_options(max_retries, gpus_per_task))
            merge_fn = ray.remote(merge_bias_task).options(**task_options(max_retries))
            n_ref = ray.put(new)
            put = {id(src): ray.put(src) for src, _ in refs}

            def submit(item):
                b, s0, s1 = item
                partials = [
                    part_fn.remote(n_ref, s0, s1, put[id(src)], r0, r1, k, metric, gpus_per_task)
                    for src, r0, r1 in parts
                ]
                return merge_fn.remote(
                    b, n_old + s0, n_old + s1, alpha, k, run_url, so, bool(p.get("save_topk", True)), *partials
                )

            _run_windowed(
                ray,
                new_blocks,
                submit,
                _session_window(ray, len(parts)),
                lambda item, rec: records.__setitem__(item[0], rec),
                progress,
                len(new_blocks),
            )
        for b, _, _ in new_blocks:
            rec = records[b]
            m["blocks_done"][str(b)] = {
                "rows": rec["rows"],
                "file": f"blocks/bias_{b:06d}.npy",
                "finished": time.time(),
                "task_seconds": round(sum(t["seconds"] for t in rec["tasks"]), 4),
            }
        m["inputs"].setdefault("gallery_parts", []).append({**_input_record(new), "rows": [n_old, n_old + new.n]})
        plan.update(
            n_rows=n_old + new.n,
            blocks=b_old + len(new_blocks),
            tasks=plan.get("tasks", 0) + len(new_blocks) * len(parts),
        )
        m.setdefault("history", []).append(
            {
                "op": "append",
                "rows": [n_old, n_old + new.n],
                "time": time.time(),
                "blocks": [b_old, b_old + len(new_blocks)],
            }
        )
        m["updated"] = time.time()
        objstore.write_json(objstore.join(run_url, MANIFEST), m, so)  # the commit
    return {
        "output": run_url,
        "operation": "append",
        "n_added": new.n,
        "n_gallery": n_old + new.n,
        "blocks_added": len(new_blocks),
        "tasks_run": len(new_blocks) * len(parts),
        "alpha": alpha,
        "k": k,
        "metric": metric,
        "seconds": {"total": time.time() - t_start},
    }


def ray_add_reference(
    gallery_url,
    new_reference_url,
    run_url: str,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    address: str | None = None,
    gpus_per_task: float = 0,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    wait: float = 10.0,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float = DEFAULT_IO_TIMEOUT,
    **_ignored,
) -> dict:
    """Fold new reference queries into a finished exact run saved with top-k: one task per (block, new
    partition), merged with the block's stored top-k; new block files are written under new names
    (``.gN``), then ONE manifest rewrite switches to them and records the new reference part (the commit:
    a crash before it leaves the run as it was); the replaced files are then removed."""
    t_start = time.time()
    so = dict(storage_options or {})
    with run_lock(run_url, so, wait):
        m = _complete_manifest(run_url, so, "--update")
        _check_run_params(m, run_url, alpha, k, metric)
        p, plan = m["params"], m["plan"]
        if not p.get("save_topk", True):
            raise ParameterError(
                f"{run_url}: the run was made without top-k (--no-store-topk), so new reference "
                "queries cannot be merged in; recompute with the reference and the new queries"
            )
        alpha, k, metric = p["alpha"], p["k"], p["metric"]
        gallery_parts = _open_parts(
            [m["inputs"]["gallery"]] + m["inputs"].get("gallery_parts", []),
            open_input(gallery_url, so, "gallery"),
            so,
            "gallery",
            run_url,
        )
        new = open_input(new_reference_url, so, "new reference queries")
        if new.dim != gallery_parts[0][0].dim:
            raise MismatchError(f"dimension mismatch: new queries d={new.dim}, gallery d={gallery_parts[0][0].dim}")
        gen = int(m.get("generation", 0)) + 1
        blocks = sorted(int(b) for b in m["blocks_done"])
        news = [(r0, min(new.n, r0 + plan["partition_rows"])) for r0 in range(0, new.n, plan["partition_rows"])]
        records: dict = {}
        with ray_session(address, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout) as ray:
            part_fn = ray.remote(partial_topk_task).options(**task_options(max_retries, gpus_per_task))
            merge_fn = ray.remote(merge_update_task).options(**task_options(max_retries))
            q_ref = ray.put(new)
            put = [ray.put(src) for src, _ in gallery_parts]

            def submit(b):
                rec = m["blocks_done"][str(b)]
                g0, g1 = rec["rows"]
                part = max(i for i, (_, start) in enumerate(gallery_parts) if start <= g0)
                start = gallery_parts[part][1]
                partials = [
                    part_fn.remote(put[part], g0 - start, g1 - start, q_ref, r0, r1, k, metric, gpus_per_task)
                    for r0, r1 in news
                ]
                return merge_fn.remote(
                    b,
                    g0,
                    g1,
                    alpha,
                    k,
                    run_url,
                    so,
                    rec.get("topk_file", f"blocks/topk_{b:06d}.npy"),
                    f"blocks/bias_{b:06d}.g{gen}.npy",
                    f"blocks/topk_{b:06d}.g{gen}.npy",
                    *partials,
                )

            _run_windowed(
                ray,
                blocks,
                submit,
                _session_window(ray, len(news)),
                lambda b, rec: records.__setitem__(b, rec),
                progress,
                len(blocks),
            )
        replaced = []
        for b in blocks:
            rec = m["blocks_done"][str(b)]
            replaced += [rec["file"], rec.get("topk_file", f"blocks/topk_{b:06d}.npy")]
            rec.update(
                file=f"blocks/bias_{b:06d}.g{gen}.npy",
                topk_file=f"blocks/topk_{b:06d}.g{gen}.npy",
                finished=time.time(),
            )
        n_ref = sum(r["shape"][0] for r in [m["inputs"]["reference"]] + m["inputs"].get("reference_parts", []))
        m["inputs"].setdefault("reference_parts", []).append({**_input_record(new), "rows": [n_ref, n_ref + new.n]})
        m["generation"] = gen
        m.setdefault("history", []).append(
            {"op": "reference-add", "rows": [n_ref, n_ref + new.n], "time": time.time(), "generation": gen}
        )
        m["updated"] = time.time()
        objstore.write_json(objstore.join(run_url, MANIFEST), m, so)  # the commit
        fs, root = objstore.url_fs(run_url, so)
        for rel in replaced:  # best effort: a reader holding the previous manifest may still need them
            with contextlib.suppress(Exception):
                fs.rm(objstore.join(root, rel))
    return {
        "output": run_url,
        "operation": "reference-add",
        "n_added": new.n,
        "n_gallery": plan["n_rows"],
        "n_reference": n_ref + new.n,
        "blocks_rewritten": len(blocks),
        "tasks_run": len(blocks) * len(news),
        "generation": gen,
        "alpha": alpha,
        "k": k,
        "metric": metric,
        "seconds": {"total": time.time() - t_start},
    }
