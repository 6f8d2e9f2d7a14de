"""What every job shares: parameters from options or files, checked bias files, notes, thread setup.

A job validates every input and output first (cheap header reads and path
checks: a bad ``-o`` fails in milliseconds, before any file is read in full),
then opens, plans, runs, records provenance and writes.  It never prints:
messages meant for people go to ``on_note`` (the CLI shows them on stderr),
long work reports to ``progress(done, total)``, and the result object holds
everything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nnn_cli.core.nnn import check_alpha, check_k
from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.biasfile import BiasFile
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.manifest import load_bias
from nnn_cli.data.outputs import output_error  # the CLI's -o - sink names a full disk the same way
from nnn_cli.data.provenance import check_bias_matches
from nnn_cli.data.tables import read_params
from nnn_cli.errors import ParameterError
from nnn_cli.scale.device import set_threads
from nnn_cli.scale.scheduler import EngineOptions

NoteFn = Callable[[str], None]
"""Called with one line meant for a person (a choice made, a warning)."""

PathLike = str | os.PathLike


@dataclass
class JobResult:
    """What a job did: ``summary`` (JSON-ready), the output written (if any) and the notes it gave."""

    summary: dict
    output: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


class Notes:
    """Collects notes and forwards each to ``on_note`` as it comes (so a person sees it before long work)."""

    def __init__(self, on_note: NoteFn | None):
        self.lines: list[str] = []
        self._on_note = on_note

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self._on_note is not None:
            self._on_note(line)


@dataclass
class IndexOptions:
    """How the reference (bias) or gallery (search) side is searched: ``flat`` is exact."""

    index: str = "flat"
    nlist: Optional[int] = None
    nprobe: Optional[int] = None
    ef_search: Optional[int] = None
    recall: Optional[float] = None
    save_index: Optional[PathLike] = None
    load_index: Optional[PathLike] = None

    @property
    def exact_flat(self) -> bool:
        return self.index == "flat" and self.save_index is None and self.load_index is None


def parse_storage_options(items) -> dict:
    """``KEY=VALUE`` strings (``--storage-option``) as fsspec storage options (``true``/``false``/numbers typed)."""
    out: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ParameterError(f"--storage-option must be KEY=VALUE, got {item!r}")
        low = value.lower()
        out[key] = True if low == "true" else False if low == "false" else _number_or_text(value)
    return out


def _number_or_text(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


@dataclass(frozen=True)
class IdsColumns:
    """Parquet ids columns per input.  ``default`` (``--ids-column``) applies to every input that has
    parquet metadata (a clip-retrieval folder, or an ids file ``.parquet``) and is left out for the others;
    ``gallery``/``queries``/``reference`` (``--gallery-ids-column``...) name one input's column, override
    ``default`` and are refused for an input without parquet metadata."""

    default: Optional[str] = None
    gallery: Optional[str] = None
    queries: Optional[str] = None
    reference: Optional[str] = None

    @classmethod
    def of(cls, value: Optional[str] | IdsColumns) -> IdsColumns:
        """``value`` as per-input columns: a plain string is ``--ids-column`` (every parquet input)."""
        return value if isinstance(value, IdsColumns) else cls(value)

    def for_input(self, label: str, spec: PathLike, ids_file: Optional[PathLike]) -> Optional[str]:
        has_parquet = str(ids_file or "").endswith(".parquet") or Path(str(spec)).is_dir()
        own = getattr(self, label, None) if label in ("gallery", "queries", "reference") else None
        if own is not None and not has_parquet:
            raise ParameterError(
                f"{spec}: the {label} has no parquet metadata to take ids column {own!r} from; it needs a "
                f"clip-retrieval folder or an ids file .parquet (--{label}-ids-column)"
            )
        return own if own is not None else self.default if has_parquet else None


def open_source(
    spec: PathLike,
    label: str,
    notes: Notes,
    ids_file: Optional[PathLike] = None,
    ids_column: Optional[str] | IdsColumns = None,
    storage_options: Optional[dict] = None,
):
    """Open an embedding input, a path or a URL (ids from ``ids_file``, or a parquet ``ids_column`` for
    clip-retrieval folders; :class:`IdsColumns` picks this input's) and pass on what the opening noticed
    (e.g. parquet ids not read without pyarrow)."""
    from nnn_cli.data.stores import is_store_uri, mask_uri

    if is_store_uri(str(spec)):
        raise ParameterError(
            f"{mask_uri(str(spec))} is a vector store, not a file: use nnn bias URI --in-place --table T --column C, "
            "nnn search --store URI --table T, or nnn export"
        )
    column = IdsColumns.of(ids_column).for_input(label, spec, ids_file)
    src = open_embeddings(spec, label, ids_file=ids_file, ids_column=column, storage_options=storage_options)
    for line in getattr(src, "notes", None) or []:
        notes(line)
    return src


def check_reference_k(k: int, reference_src, params: Optional[PathLike] = None) -> int:
    """:func:`~nnn_cli.core.nnn.check_k` against an opened reference, the message naming the reference
    file and where k came from (the params file, or --k)."""
    try:
        return check_k(k, reference_src.n)
    except ParameterError as exc:
        if int(k) != k or k < 1:
            raise
        n = reference_src.n
        where = f"{params}: k={k}" if params is not None else f"--k {k}"
        raise ParameterError(
            f"{where} is larger than the reference set {reference_src.name} ({n} rows); use k <= {n}"
        ) from exc


def note_backend_mismatch(notes: Notes, *sources) -> None:
    """A warning when the inputs' embeddings were made with different backends/quantisations (``nnn embed``)."""
    from nnn_cli.data.provenance import backend_mismatch

    line = backend_mismatch([s for s in sources if s is not None])
    if line:
        notes(line)


def resolve_params(alpha: Optional[float], k: Optional[int], params: Optional[PathLike]) -> tuple[float, int]:
    """alpha and k from the arguments or a params file (exactly one of the two ways), both validated."""
    if params is not None:
        if alpha is not None or k is not None:
            raise ParameterError("give either --params or --alpha/--k, not both")
        p = read_params(params)
        alpha, k = p["alpha"], p["k"]
    elif alpha is None or k is None:
        raise ParameterError("give --alpha and --k (or --params PARAMS.json from `nnn tune`)")
    return check_alpha(alpha), k


def read_checked_bias(bias: PathLike, gallery_src, metric: str, force: bool) -> BiasFile:
    """The bias file, refused (unless ``force``) when it was made for another gallery or metric."""
    bf = load_bias(bias)
    check_bias_matches(bf.attrs, len(bf.bias), str(bias), gallery_src, metric, force)
    return bf


def setup_threads(threads: int | None) -> None:
    """``--threads``: our engine's workers, faiss's OpenMP and BLAS (0 or None: all cores)."""
    set_threads(threads)


__all__ = [
    "EngineOptions",
    "IdsColumns",
    "IndexOptions",
    "output_error",
    "JobResult",
    "parse_storage_options",
    "open_source",
    "note_backend_mismatch",
    "Notes",
    "NoteFn",
    "PathLike",
    "ProgressFn",
    "resolve_params",
    "read_checked_bias",
    "setup_threads",
]
