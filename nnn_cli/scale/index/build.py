"""Build, save and load faiss indexes (inner product), over arrays or streamed sources.

IVF-Flat is trained with our GEMM spherical k-means and filled with GEMM
assignment (:mod:`nnn_cli.core.kmeans`), then handed to faiss as finished
lists: the file is a plain faiss ``IndexIVFFlat``.  Saved indexes carry a
JSON sidecar (size, dimension, input fingerprint) checked on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.outputs import atomic_output
from nnn_cli.data.readahead import read_ahead
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.scale.device import faiss_module
from nnn_cli.scale.index.choose import (
    GEMM_KMEANS_ITERATIONS,
    GEMM_TRAIN_POINTS_PER_LIST,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    INDEX_KINDS,
    KMEANS_ITERATIONS,
    TRAIN_POINTS_PER_LIST,
    IndexChoice,
)


def _n_rows(data) -> int:
    return data.n if isinstance(data, EmbeddingSource) else len(data)


def _dim(data) -> int:
    return data.dim if isinstance(data, EmbeddingSource) else data.shape[1]


def _blocks(data, metric: str, block_rows: int, fingerprint: bool = True):
    if isinstance(data, EmbeddingSource):
        yield from data.iter_blocks(metric, block_rows, fingerprint=fingerprint)
    else:
        for start in range(0, len(data), block_rows):
            yield start, np.ascontiguousarray(data[start : start + block_rows], dtype=np.float32)


def _reused_chunks(data, metric: str, chunk_rows: int, read_rows: int = 16384, fingerprint: bool = True):
    """Yield ``(start, chunk)`` of up to ``chunk_rows`` rows, filled from small validated reads into ONE
    buffer that the next chunk overwrites (so the caller must be done with a chunk before asking for the
    next): a large chunk then costs its own size, not several times it in conversion temporaries.
    ``fingerprint=False``: the reads do not hash (a hash wanted later is taken by a pass of its own, beside
    other work), so a source's chunk is filled by ``read_rows`` ranges read and converted on the engine's
    threads at once, errors raised in row order (the cores otherwise wait on a serial fill)."""
    n = _n_rows(data)
    buf = np.empty((min(chunk_rows, n), _dim(data)), dtype=np.float32)
    if not fingerprint and isinstance(data, EmbeddingSource):
        from nnn_cli.core.topk import run_parallel

        for chunk_start in range(0, n, len(buf)):
            stop = min(n, chunk_start + len(buf))

            def fill_range(lo: int, start: int = chunk_start, stop: int = stop) -> None:
                hi = min(stop, lo + read_rows)
                buf[lo - start : hi - start] = data.rows(lo, hi, metric)

            run_parallel(fill_range, list(range(chunk_start, stop, read_rows)))
            yield chunk_start, buf[: stop - chunk_start]
        return
    fill, chunk_start = 0, 0
    for _start, block in _blocks(data, metric, read_rows, fingerprint):
        while len(block):
            take = min(len(block), len(buf) - fill)
            buf[fill : fill + take] = block[:take]
            fill, block = fill + take, block[take:]
            if fill == len(buf) or chunk_start + fill == n:
                yield chunk_start, buf[:fill]
                chunk_start, fill = chunk_start + fill, 0


def sample_rows(data, n_sample: int, metric: str = "cosine", block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(rows, positions): ``n_sample`` evenly spaced rows (deterministic), read in one streaming pass."""
    n = _n_rows(data)
    pos = np.unique(np.linspace(0, n - 1, num=min(n, n_sample)).astype(np.int64))
    if not isinstance(data, EmbeddingSource):
        return np.ascontiguousarray(data[pos], dtype=np.float32), pos
    return data.take_rows(pos, metric, block_rows), pos


def new_index(choice: IndexChoice, dim: int):
    """An empty faiss inner-product index for ``choice``."""
    faiss = faiss_module()
    if choice.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if choice.kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{choice.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = 1234
        return index
    if choice.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    try:
        return faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "invalid"
        raise ParameterError(
            f"--index {choice.factory!r}: not a faiss index factory string or one of {', '.join(INDEX_KINDS)} ({first})"
        ) from None


def build_index(
    data, choice: IndexChoice, metric: str = "cosine", block_rows: int = 65536, progress: ProgressFn | None = None
):
    """Train (on a deterministic sample) and fill an index from an array or a streamed source."""
    dim, n = _dim(data), _n_rows(data)
    if choice.kind == "ivf":
        return _build_ivf_flat(data, choice, metric, block_rows, progress)
    index = new_index(choice, dim)
    if not index.is_trained:
        n_train = n
        nl = choice.nlist or _factory_nlist(index)
        if nl:
            n_train = min(n, max(TRAIN_POINTS_PER_LIST * nl, 39 * nl))
        train, _ = sample_rows(data, n_train, metric, block_rows)
        try:
            index.train(train)
        except RuntimeError as exc:
            raise ParameterError(
                f"--index {choice.factory or choice.kind!r}: faiss could not train it on "
                f"{len(train)} rows of {n} ({_faiss_reason(exc)}); use fewer lists or more rows"
            ) from None
        del train
    for start, block in _blocks(data, metric, block_rows):
        try:
            index.add(block)
        except RuntimeError as exc:
            raise ParameterError(
                f"--index {choice.factory or choice.kind!r}: faiss could not add rows to it ({_faiss_reason(exc)})"
            ) from None
        if progress:
            progress(start + len(block), n)
    return index


def _faiss_reason(exc: BaseException) -> str:
    """The useful part of a faiss error ("Error in void faiss::...: Error: 'x' failed: WHY" -> WHY)."""
    text = " ".join(str(exc).split())
    if "failed:" in text:
        text = text.rsplit("failed:", 1)[1].strip()
    elif "Error:" in text:
        text = text.rsplit("Error:", 1)[1].strip()
    return text[:200] or type(exc).__name__


def _build_ivf_flat(data, choice: IndexChoice, metric: str, block_rows: int, progress: ProgressFn | None = None):
    """An ``IndexIVFFlat`` trained and filled with GEMM assignment (:mod:`nnn_cli.core.kmeans`).

    The same index type as ``IVF{nlist},Flat`` from faiss (saved, loaded and
    searched as one), built several times faster: faiss assigns points with
    its flat-index search, which is slower than BLAS here.  Rows go to their
    best list through :mod:`nnn_cli.scale.index.coarse` (two levels from
    ``TWO_LEVEL_MIN_LISTS`` lists: near-best, a fifth of the work).
    """
    from nnn_cli.core.kmeans import spherical_kmeans
    from nnn_cli.scale.index.coarse import assign_lists, coarse_for

    faiss = faiss_module()
    dim, n = _dim(data), _n_rows(data)
    assert choice.nlist is not None  # an IVF choice carries its list count
    nl = int(choice.nlist)
    train, _ = sample_rows(data, min(n, max(GEMM_TRAIN_POINTS_PER_LIST * nl, 39 * nl)), metric, block_rows)
    centroids = spherical_kmeans(train, nl, GEMM_KMEANS_ITERATIONS)
    del train
    nl = len(centroids)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, nl, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    coarse = coarse_for(centroids)  # flat below TWO_LEVEL_MIN_LISTS lists, else two levels
    # the next block is read, checked, converted and hashed by a thread while this one is assigned and added
    for start, block in read_ahead(_blocks(data, metric, block_rows)):
        labels = assign_lists(coarse, block)
        index.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(labels))
        if progress:
            progress(start + len(block), n)
    return index


def _factory_nlist(index) -> int | None:
    ivf = _as_ivf(index)
    return int(ivf.nlist) if ivf is not None else None


def _as_ivf(index):
    faiss = faiss_module()
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _as_hnsw(index):
    faiss = faiss_module()
    base = faiss.downcast_index(index)
    return base if hasattr(base, "hnsw") else None


def save_index(index, path: str | Path, meta: dict) -> Path:
    """Write the index (faiss.write_index) atomically, and ``PATH.json`` describing what it indexes."""
    faiss = faiss_module()
    path = Path(path)
    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_output(Path(str(path) + ".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def load_index(path: str | Path, dim: int, ntotal: int, what: str, meta: dict | None = None):
    """Read an index the user named (faiss index files must be trusted) and check it fits the data.

    Refuses (:class:`MismatchError`) a dimension, row count or metric that
    does not match, and, where ``PATH.json`` exists, a different metric or
    input fingerprint than ``meta``.
    """
    faiss = faiss_module()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such index file (--load-index)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable faiss index ({str(exc).strip().splitlines()[-1][:120]})") from None
    if index.d != dim:
        raise MismatchError(f"{path}: index has d={index.d} but the {what} needs d={dim}; rebuild it with --save-index")
    if index.ntotal != ntotal:
        raise MismatchError(
            f"{path}: index holds {index.ntotal} vectors but the {what} has {ntotal} rows; rebuild it with --save-index"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise MismatchError(f"{path}: index does not use inner product; rebuild it with nnn --save-index")
    side = Path(str(path) + ".json")
    if meta and side.is_file():
        try:
            saved = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{side}: not valid JSON; delete it or rebuild the index") from None
        for key, value in meta.items():
            if key in ("side", "metric", "fingerprint", "bias") and key in saved and saved[key] != value:
                raise MismatchError(
                    f"{path}: index was built with {key}={saved[key]!r}, but this run has "
                    f"{key}={value!r}; rebuild it with --save-index"
                )
    return index


def index_meta(data_fingerprint: str, metric: str, choice: IndexChoice, side: str) -> dict:
    return {"side": side, "metric": metric, "fingerprint": data_fingerprint, "index": choice.describe()}
