"""The paper's protocol, shared by every job that takes a reference: the leak check, the reference
fraction (and params that record one), and the sketch a bias file keeps for later checks.

Each helper is one call in the job that needs it (``tune``, ``bias``, ``eval``, ``attribute-bias``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from nnn_cli.core.leak import (
    SKETCH_BITS,
    LeakReport,
    check_against_sketch,
    find_leaks,
    id_hashes,
    sketch_codes,
    sketch_sample,
)
from nnn_cli.data.biasfile import read_bias_datasets
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.data.subset import reference_fraction
from nnn_cli.data.tables import read_params
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import PathLike

SKETCH_DATASETS = ("leak_sketch_codes", "leak_sketch_id_hashes")


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


def sketch_of(src: EmbeddingSource) -> tuple[dict[str, np.ndarray], dict]:
    """Extra datasets and attributes a bias file records so ``eval --bias`` can check queries later."""
    pick = sketch_sample(src.n)
    if pick is None:  # streamed: one pass over the reference, one block at a time
        codes = np.concatenate([sketch_codes(block) for _, block in src.iter_blocks("ip")])
    else:
        codes = sketch_codes(src.take_rows(pick, "ip"))
    extra = {"leak_sketch_codes": codes}
    ids = src.ids()
    if ids is not None:
        extra["leak_sketch_id_hashes"] = id_hashes(ids)
    return extra, {"leak_sketch_bits": SKETCH_BITS, "leak_sketch_rows": int(len(codes))}


def leak_check_from_bias(
    bias_path, queries: np.ndarray, query_ids, strict: bool, notes, what: str = "test queries"
) -> LeakReport | None:
    """Check ``queries`` against the sketch of the reference that made ``bias_path`` (None, with a note,
    when the file records none: a ``.npy`` bias or one made before sketches were kept)."""
    found = read_bias_datasets(bias_path, SKETCH_DATASETS)
    if "leak_sketch_codes" not in found:
        notes(f"note: {bias_path} records no reference sketch (made by an older nnn, or .npy): leaks not checked")
        return None
    sketch = {"codes": found["leak_sketch_codes"], "id_hashes": found.get("leak_sketch_id_hashes")}
    report = check_against_sketch(queries, sketch, query_ids, what=what).raise_if(strict)
    if report.warning:
        notes(f"warning: {report.warning}")
    return report


@dataclass
class BiasProtocol:
    """What ``nnn bias`` adds for the protocol: the reference share used, the sketch, the leak check."""

    reference: EmbeddingSource
    attrs: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def bias_protocol(
    reference: EmbeddingSource,
    params: Optional[PathLike],
    fraction: Optional[float],
    seed: Optional[int],
    queries: Optional[PathLike],
    strict: bool,
    metric: str,
    notes,
) -> BiasProtocol:
    """The reference share (as asked, or as the params record it), the reference's sketch for later leak
    checks (``eval --bias``), and, given ``queries``, the leak check of those queries against it."""
    check_fraction(fraction)
    doc = read_params(params) if params is not None else None
    fraction, seed = fraction_from_params(fraction, seed, doc, str(params))
    src, record = apply_fraction(reference, fraction, seed, notes)
    out = BiasProtocol(src, {f"reference_{k}" if k == "seed" else k: v for k, v in record.items()})
    out.datasets, sketch_attrs = sketch_of(src)
    out.attrs.update(sketch_attrs)
    out.summary.update(record)
    if queries is not None:
        q_src = open_embeddings(queries, "queries")
        check_same_dim(q_src, src)
        blocks = (block for _, block in src.iter_blocks("cosine"))  # streamed: one reference block at a time
        report = leak_check(q_src.read(metric), q_src.ids(), blocks, src.ids(), "queries", strict, notes)
        out.summary["leak"] = report.to_dict()
        out.attrs.update({"leak_queries": q_src.name, "leak_n_leaked": report.n_leaked})
    return out


def carried_sketch(stored_path, reference_unchanged: bool, new_reference: EmbeddingSource | None, attrs: dict) -> dict:
    """The sketch datasets of an updated bias file: kept as they are after ``--append-to`` (same reference),
    extended with the new queries' codes and id hashes after ``--update --reference-add``.  A file that
    recorded none gets none (and ``attrs`` loses any stale sketch attributes)."""
    found = read_bias_datasets(stored_path, SKETCH_DATASETS)
    if "leak_sketch_codes" not in found:
        for key in ("leak_sketch_bits", "leak_sketch_rows"):
            attrs.pop(key, None)
        return {}
    if reference_unchanged or new_reference is None:
        return found
    codes = np.concatenate([found["leak_sketch_codes"], sketch_codes(new_reference.read("ip"))])
    out = {"leak_sketch_codes": codes}
    new_ids = new_reference.ids()
    if "leak_sketch_id_hashes" in found and new_ids is not None:
        out["leak_sketch_id_hashes"] = np.union1d(found["leak_sketch_id_hashes"], id_hashes(new_ids))
    attrs.update({"leak_sketch_bits": SKETCH_BITS, "leak_sketch_rows": int(len(codes))})
    return out
