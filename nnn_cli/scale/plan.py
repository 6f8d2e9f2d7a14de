"""One entry point for the bias step at any scale: exact in memory, exact streamed, or indexed.

:func:`plan_bias` decides (and explains) how the top-k reference scores will
be computed from the options; :func:`run_bias_plan` does it.  The CLI prints
the plan's description before the work starts and records it in the output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_k, reference_topk
from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import ParameterError
from nnn_cli.scale.budget import BlockPlan, format_bytes, plan_blocks
from nnn_cli.scale.device import resolve_device
from nnn_cli.scale.index.build import index_meta
from nnn_cli.scale.index.choose import IndexChoice, choose_index
from nnn_cli.scale.index.steps import indexed_reference_topk
from nnn_cli.scale.streaming import streamed_bias

STREAM_REFERENCE_ABOVE = 128 * 2**20
"""Without --memory-budget, an exact bias streams a reference larger than this (as float32)."""

DEFAULT_STREAM_BUDGET = 1 << 30
"""The block plan used for that streaming (about 1 GB of working memory at most)."""


@dataclass
class BiasPlan:
    """How the bias will be computed: index choice, memory plan, device, and the lines to tell the user."""

    choice: IndexChoice
    device: str
    blocks: BlockPlan | None = None
    keep_topk: bool = True
    load_index: Path | None = None
    save_index: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        if not self.choice.exact or self.load_index is not None:
            return "indexed"
        if self.device == "cuda":
            return "exact-cuda"
        return "exact-streamed" if self.blocks is not None else "exact"

    @property
    def room_beside(self) -> bool:
        """True when other work (the leak sketch a bias file records) can run beside the step: every GEMM
        of the exact CPU engine is a single-threaded tile on the engine's threads (so numpy's BLAS is held at
        one thread for the whole step) and its memory is small.  Not beside an index: measured at 1M x 1M
        the sketch's reads on top of the index and a gallery block lifted the peak from 3.88 to 4.01 GiB."""
        return self.mode in ("exact", "exact-streamed")

    def describe(self) -> str:
        if self.mode == "indexed":
            text = f"index: {self.choice.describe()}; {self.choice.reason}"
            if self.choice.recall_target:
                text += f"; tuning for top-k recall >= {self.choice.recall_target}"
            return text
        text = f"index: flat (exact); {self.choice.reason}"
        if self.blocks is not None:
            text += (
                f"; streaming the reference in blocks of {self.blocks.reference_rows} rows with "
                f"{self.blocks.gallery_rows} gallery rows resident"
            )
        if self.device == "cuda":
            text += "; on the GPU (torch)"
        return text

    def attrs(self) -> dict:
        out = {"bias_mode": self.mode, "device": self.device, **self.choice.to_dict()}
        if self.blocks is not None:
            out["gallery_block_rows"] = self.blocks.gallery_rows
            out["reference_block_rows"] = self.blocks.reference_rows
        return out


def plan_bias(
    gallery: EmbeddingSource,
    reference: EmbeddingSource,
    k: int,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    recall: float | None = None,
    memory_budget: int | None = None,
    device: str = "cpu",
    load_index: str | os.PathLike | None = None,
    save_index: str | os.PathLike | None = None,
    store_topk: bool = True,
) -> BiasPlan:
    """Validate the scale options and decide how to compute the bias (nothing is read yet)."""
    k = check_k(k, reference.n)
    choice = choose_index(index, gallery.n, reference.n, reference.dim, k, nlist, nprobe, ef_search, recall)
    if load_index is not None:
        choice = IndexChoice(
            "loaded",
            factory=str(load_index),
            nprobe=nprobe,
            ef_search=ef_search,
            recall_target=choice.recall_target,
            reason=f"--load-index {load_index}",
        )
    used, message = resolve_device(device)
    plan = BiasPlan(
        choice,
        used,
        keep_topk=store_topk,
        load_index=Path(load_index) if load_index else None,
        save_index=Path(save_index) if save_index else None,
    )
    if message:
        plan.notes.append(message)
    if plan.load_index is not None and plan.save_index is not None:
        raise ParameterError("give --load-index or --save-index, not both")
    if choice.exact and plan.save_index is not None:
        if index != "auto":
            raise ParameterError(
                "--save-index needs an approximate index (--index ivf|hnsw|FACTORY, or auto "
                "choosing one); the exact path has nothing worth saving"
            )
        plan.notes.append(f"--save-index {plan.save_index}: nothing saved, auto chose the exact path")
        plan.save_index = None
    if plan.mode == "indexed" and used == "cuda":
        plan.notes.append("approximate indexes run on the CPU (faiss-cpu); the GPU is used for the exact path only")
        plan.device = "cpu"
    if memory_budget is not None and plan.mode in ("exact", "exact-cuda"):
        plan.device = "cpu"
        plan.blocks = plan_blocks(memory_budget, reference.dim, k, gallery.n)
        topk_bytes = gallery.n * k * 4
        if store_topk and topk_bytes > memory_budget // 4:
            plan.keep_topk = False
            plan.notes.append(
                f"top-k scores ({format_bytes(topk_bytes)}) not stored: more than a quarter of "
                f"--memory-budget {format_bytes(memory_budget)}"
            )
    elif memory_budget is not None:
        plan.notes.append("--memory-budget bounds the exact path; an index over the reference is held in memory")
    elif plan.mode == "exact" and reference.n * reference.dim * 4 > STREAM_REFERENCE_ABOVE:
        # Streaming a large reference from the file costs no time (same GEMM tiles, bit-identical
        # results) and keeps it out of memory: measured at N=5k, M=118k, d=512: 6.8 s and 173 MB
        # streamed against 7.0 s and 447 MB loaded.
        plan.blocks = plan_blocks(DEFAULT_STREAM_BUDGET, reference.dim, k, gallery.n)
    return plan


def run_bias_plan(
    plan: BiasPlan,
    gallery: EmbeddingSource,
    reference: EmbeddingSource,
    alpha: float,
    k: int,
    metric: str,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(bias (N,), top-k scores (N, k) or None, info dict) following ``plan`` (``alpha`` validated by the caller)."""
    info: dict = {}
    if plan.mode == "exact-streamed":
        assert plan.blocks is not None  # an exact-streamed plan has its blocks
        bias, topk = streamed_bias(gallery, reference, alpha, k, metric, plan.blocks, plan.keep_topk, progress)
        return bias, topk, info
    if plan.mode == "indexed":
        # the gallery is streamed: only the index and the (N, k) top-k are held whole
        # the metadata a saved or loaded index carries; without either, no separate pass hashes the
        # reference: the index build's own pass takes the hash (the provenance reads it at commit)
        saved = plan.load_index is not None or plan.save_index is not None
        meta = index_meta(reference.fingerprint(), metric, plan.choice, "reference") if saved else None
        topk, run = indexed_reference_topk(
            gallery, reference, k, metric, plan.choice, plan.load_index, plan.save_index, meta, progress
        )
        info.update(run.info)
        return bias_from_topk(topk, alpha, k), (topk if plan.keep_topk else None), info
    g = gallery.read(metric)
    if plan.mode == "exact-cuda":
        from nnn_cli.scale.device import cuda_topk_scores

        topk = cuda_topk_scores(g, reference.read(metric), k)
    else:
        topk = reference_topk(g, reference.read(metric), k, progress=progress)
    return bias_from_topk(topk, alpha, k), (topk if plan.keep_topk else None), info


@dataclass
class SearchPlan:
    """How `nnn search` will run: exact flat index or an approximate one over ``[r, b]`` with re-ranking."""

    choice: IndexChoice
    overfetch: int | None = None
    load_index: Path | None = None
    save_index: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def indexed(self) -> bool:
        return not self.choice.exact or self.load_index is not None

    def describe(self) -> str:
        if not self.indexed:
            return f"index: flat (exact); {self.choice.reason}"
        fetch = f"x{self.overfetch}" if self.overfetch else "(x1, or x4 for quantized indexes)"
        text = (
            f"index: {self.choice.describe()}; {self.choice.reason}; candidates {fetch} "
            "re-ranked by exact debiased score"
        )
        if self.choice.recall_target:
            text += f"; tuning for top-k recall >= {self.choice.recall_target}"
        return text


def plan_search(
    n_queries: int,
    n_gallery: int,
    dim: int,
    top_k: int,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    recall: float | None = None,
    overfetch: int | None = None,
    device: str = "cpu",
    load_index: str | os.PathLike | None = None,
    save_index: str | os.PathLike | None = None,
) -> SearchPlan:
    """Validate the index options of `nnn search` and decide (nothing is read yet)."""
    if overfetch is not None and overfetch < 1:
        raise ParameterError(f"--overfetch must be >= 1, got {overfetch}")
    choice = choose_index(index, n_queries, n_gallery, dim + 1, min(top_k, n_gallery), nlist, nprobe, ef_search, recall)
    if load_index is not None:
        choice = IndexChoice(
            "loaded",
            factory=str(load_index),
            nprobe=nprobe,
            ef_search=ef_search,
            recall_target=choice.recall_target,
            reason=f"--load-index {load_index}",
        )
    plan = SearchPlan(
        choice, overfetch, Path(load_index) if load_index else None, Path(save_index) if save_index else None
    )
    if plan.load_index is not None and plan.save_index is not None:
        raise ParameterError("give --load-index or --save-index, not both")
    if choice.exact and plan.save_index is not None:
        raise ParameterError("--save-index needs an approximate index (--index ivf|hnsw|FACTORY)")
    _, message = resolve_device(device)
    if message:
        plan.notes.append(message)
    elif device == "cuda":
        plan.notes.append("search runs on the CPU (faiss-cpu); the GPU is used by the exact bias step only")
    return plan


def run_search_plan(
    plan: SearchPlan,
    queries: np.ndarray,
    gallery: np.ndarray,
    bias: np.ndarray | None,
    top_k: int,
    gallery_fingerprint: str,
    metric: str,
    block_rows: int = 4096,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, indices, info): debiased top-k, exact or through the planned index."""
    from nnn_cli.core.search import DebiasedIndex
    from nnn_cli.scale.index.steps import indexed_search

    if not plan.indexed:
        scores, idx = DebiasedIndex(gallery, bias).search(queries, top_k, block_rows=block_rows, progress=progress)
        return scores, idx, {"index": "flat"}
    import hashlib

    bias_hash = hashlib.blake2b(bias.tobytes(), digest_size=16).hexdigest() if bias is not None else None
    meta = {**index_meta(gallery_fingerprint, metric, plan.choice, "gallery"), "bias": bias_hash}
    scores, idx, run = indexed_search(
        queries, gallery, bias, top_k, plan.choice, plan.overfetch, plan.load_index, plan.save_index, meta, progress
    )
    return scores, idx, run.to_dict()
