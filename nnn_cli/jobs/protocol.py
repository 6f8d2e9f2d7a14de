"""The paper's protocol, shared by every job that takes a reference: the leak check, the reference
fraction (and params that record one), and the sketch a bias file keeps for later checks.

Each helper is one call in the job that needs it (``tune``, ``bias``, ``eval``, ``attribute-bias``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from nnn_cli.core.leak import (
    SKETCH_BITS,
    SKETCH_MAX_ROWS,
    LeakReport,
    check_against_sketch,
    find_leaks,
    id_hashes,
    sketch_codes,
    sketch_sample,
)
from nnn_cli.data.biasfile import SKETCH_DATASETS, read_bias_datasets
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.readahead import read_ahead
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.data.subset import reference_fraction
from nnn_cli.data.tables import read_params
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import PathLike


def fraction_from_params(
    fraction: Optional[float], seed: Optional[int], params_doc: dict | None, params_name: str = "the params"
) -> tuple[float, int]:
    """The reference fraction and seed to use: as given, else as the params file records them.

    Params tuned on a share of the reference (``reference_fraction`` < 1) are applied to the same
    share (same fraction, same seed); asking for another share is refused with one line.
    """
    recorded = float((params_doc or {}).get("reference_fraction", 1.0))
    recorded_seed = int((params_doc or {}).get("seed", 0)) if recorded < 1 else 0
    if recorded < 1:
        same = (fraction is None or float(fraction) == recorded) and (seed is None or int(seed) == recorded_seed)
        if not same:
            raise ParameterError(
                f"{params_name} was tuned with --reference-fraction {recorded:g} --seed {recorded_seed}; give the same "
                f"share (or none, to apply it), not --reference-fraction {fraction if fraction is not None else 1:g} "
                f"--seed {seed if seed is not None else 0}"
            )
        return recorded, recorded_seed
    return (1.0 if fraction is None else float(fraction)), (0 if seed is None else int(seed))


def check_fraction(fraction: Optional[float]) -> None:
    if fraction is not None and not 0 < float(fraction) <= 1:
        raise ParameterError(f"--reference-fraction must be in (0, 1], got {fraction}")


def apply_fraction(src: EmbeddingSource, fraction: float, seed: int, notes) -> tuple[EmbeddingSource, dict]:
    """The reference share to use, and what to record (``reference_fraction``, ``seed``, ``n_reference_used``)."""
    if fraction >= 1:
        return src, {}
    sub = reference_fraction(src, fraction, seed)
    notes(f"note: using {sub.n} of {src.n} reference queries (--reference-fraction {fraction:g}, --seed {seed})")
    return sub, {"reference_fraction": fraction, "seed": seed, "n_reference_used": sub.n, "n_reference_total": src.n}


def leak_check(
    queries: np.ndarray,
    query_ids,
    reference: np.ndarray | Iterable[np.ndarray],
    reference_ids,
    what: str,
    strict: bool,
    notes,
) -> LeakReport:
    """The one leak check (ids and near-duplicate rows); warns through ``notes``, raises under ``strict``."""
    report = find_leaks(queries, reference, query_ids, reference_ids, what=what).raise_if(strict)
    if report.warning:
        notes(f"warning: {report.warning}")
    return report


def sketch_attrs(n_rows: int) -> dict:
    """The attributes recorded with the sketch of an ``n_rows``-row reference (known before it is made: every
    row, or a sample of SKETCH_MAX_ROWS, without drawing the sample)."""
    return {"leak_sketch_bits": SKETCH_BITS, "leak_sketch_rows": int(min(n_rows, SKETCH_MAX_ROWS))}


def sketch_of(src: EmbeddingSource) -> tuple[dict[str, np.ndarray], dict]:
    """Extra datasets and attributes a bias file records so ``eval --bias`` can check queries later."""
    pick = sketch_sample(src.n)
    if pick is None:  # streamed: one pass over the reference, one block at a time
        blocks = read_ahead(src.iter_blocks("ip", fingerprint=False))  # the bias's own pass takes the hash
        codes = np.concatenate([sketch_codes(block) for _, block in blocks])
    else:
        codes = sketch_codes(src.take_rows(pick, "ip"))
    extra = {"leak_sketch_codes": codes}
    ids = src.ids()
    if ids is not None:
        extra["leak_sketch_id_hashes"] = id_hashes(ids)
    attrs = sketch_attrs(src.n)
    assert attrs["leak_sketch_rows"] == len(codes)
    return extra, attrs


def leak_check_from_bias(
    bias_path, queries: np.ndarray, query_ids, strict: bool, notes, what: str = "test queries"
) -> LeakReport | None:
    """Check ``queries`` against the sketch of the reference that made ``bias_path`` (None, with a note,
    when the file records none: a ``.npy`` bias or one made before sketches were kept)."""
    found = read_bias_datasets(bias_path, SKETCH_DATASETS)
    if "leak_sketch_codes" not in found:
        notes(
            f"note: {bias_path} records no reference sketch (a run folder, a .npy, made with --no-leak-sketch or by an older nnn): "
            "leaks not checked"
        )
        return None
    sketch = {"codes": found["leak_sketch_codes"], "id_hashes": found.get("leak_sketch_id_hashes")}
    report = check_against_sketch(queries, sketch, query_ids, what=what).raise_if(strict)
    if report.warning:
        notes(f"warning: {report.warning}")
    return report


def reference_share(fraction: Optional[float], seed: Optional[int], params: Optional[PathLike]) -> tuple[float, int]:
    """The reference share to use (``--reference-fraction``/``--seed``), as given or as ``params`` record it;
    checked once, where a request is built."""
    check_fraction(fraction)
    doc = read_params(params) if params is not None else None
    return fraction_from_params(fraction, seed, doc, str(params))


_SKETCH_LOCK = threading.Lock()


@dataclass
class BiasProtocol:
    """What ``nnn bias`` adds for the protocol: the reference share used, its record, and (lazily, for a bias
    file) the sketch of that share for later leak checks (``eval --bias``)."""

    reference: EmbeddingSource
    attrs: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    _sketch: tuple[dict, dict] | None = None

    def sketch(self) -> tuple[dict[str, np.ndarray], dict]:
        """(datasets, attrs) of the reference's sketch, computed once (by whichever thread asks first: it
        may be computed beside the bias while the provenance asks for it)."""
        with _SKETCH_LOCK:  # a module lock: the protocol itself travels to Ray tasks (a lock does not pickle)
            if self._sketch is None:
                self._sketch = sketch_of(self.reference)
            return self._sketch


def bias_protocol(
    reference: EmbeddingSource,
    fraction: float,
    seed: int,
    queries: Optional[str],
    strict: bool,
    metric: str,
    notes,
    storage_options: dict | None = None,
) -> BiasProtocol:
    """The reference share (``fraction``, ``seed``: see :func:`reference_share`) and, given ``queries``, the
    leak check of those queries against it (warned, refused under ``strict``)."""
    src, record = apply_fraction(reference, fraction, seed, notes)
    out = BiasProtocol(src, {f"reference_{k}" if k == "seed" else k: v for k, v in record.items()}, dict(record))
    if queries is not None:
        summary, attrs = queries_leak_check(queries, src, strict, metric, notes, storage_options)
        out.summary.update(summary)
        out.attrs.update(attrs)
    return out


def queries_leak_check(
    queries: str,
    reference: EmbeddingSource,
    strict: bool,
    metric: str,
    notes,
    storage_options: dict | None = None,
    stored_bias: Optional[str] = None,
) -> tuple[dict, dict]:
    """``nnn bias --queries``: the queries against the reference this run reads (streamed, one block at a
    time), and, given ``stored_bias`` (``--update``), against the sketch of the reference that made it.
    Returns the ``--json`` additions and the attributes to record."""
    q_src = open_embeddings(queries, "queries", storage_options=dict(storage_options or {}))
    check_same_dim(q_src, reference)
    q = q_src.read(metric)
    blocks = (block for _, block in reference.iter_blocks("cosine"))
    report = leak_check(q, q_src.ids(), blocks, reference.ids(), "queries", strict, notes)
    summary = {"leak": report.to_dict()}
    if stored_bias is not None:
        earlier = leak_check_from_bias(stored_bias, q, q_src.ids(), strict, notes, "queries")
        if earlier is not None:
            summary["leak_stored_reference"] = earlier.to_dict()
    return summary, {"leak_queries": q_src.name, "leak_n_leaked": report.n_leaked}
