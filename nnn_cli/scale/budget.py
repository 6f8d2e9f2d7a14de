"""Memory budgets: parse ``--memory-budget 2GB`` and size the blocks of the streamed bias step.

The streamed exact bias keeps one gallery chunk, its running top-k, one
reference block and one GEMM score tile resident; everything else stays on
disk.  :func:`plan_blocks` picks the gallery chunk so that these fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE
from nnn_cli.errors import ParameterError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

MIN_BUDGET = 256 * 1024**2
"""Below this the fixed working set (score tile, reference block, interpreter) does not fit."""


def parse_memory_budget(text: str | int | None) -> int | None:
    """Bytes from ``"2GB"``, ``"512MB"``, ``"1.5G"``, ``"800MiB"`` or a plain byte count (binary units).

    None or "" means no budget.  Raises :class:`ParameterError` for anything else
    or for a budget under :data:`MIN_BUDGET`.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    match = _BUDGET_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ParameterError(f"--memory-budget {text!r}: expected a size such as 2GB, 512MB or 1.5G")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < MIN_BUDGET:
        raise ParameterError(
            f"--memory-budget {text!r} is below the minimum of 256MB (one score tile and one reference block must fit)"
        )
    return size


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


@dataclass(frozen=True)
class BlockPlan:
    """Rows per resident gallery chunk and per reference block (multiples of the GEMM tiles)."""

    gallery_rows: int
    reference_rows: int
    fixed_bytes: int
    per_gallery_row_bytes: int


INTERPRETER_BYTES = 96 * 1024**2
"""Python, numpy, faiss, h5py, typer and rich loaded: measured resident size before any data (about 65 MB)."""


def plan_blocks(budget: int, dim: int, k: int, n_gallery: int, workers: int | None = None) -> BlockPlan:
    """Choose block sizes so the streamed bias stays within ``budget`` bytes of resident memory.

    Fixed: the interpreter, and per worker thread (see
    :class:`~nnn_cli.core.topk.RunningTopScores`) a QUERY_TILE x DATABASE_TILE score
    tile, one reference tile (raw read, float32 copy, normalised copy; and two more for the block read ahead) and
    merge buffers.  Per gallery row: the float32 row (x2 while reading) and the
    running top-k (x3 while merging, plus one per extra worker).  The
    reference is read ``workers`` tiles at a time so every worker has one.
    """
    from nnn_cli.core.topk import selection_threads

    workers = max(1, int(workers or selection_threads()))
    tile = QUERY_TILE * DATABASE_TILE * 4
    ref_block = DATABASE_TILE * dim * 4 * 5  # + the block read ahead and the one being read (data/readahead)
    merge = QUERY_TILE * 2 * k * 4 * 2
    fixed = INTERPRETER_BYTES + workers * (tile + ref_block + merge)
    per_row = dim * 4 * 2 + k * 4 * (2 + workers)
    room = budget - fixed
    if room < per_row * QUERY_TILE:
        raise ParameterError(
            f"--memory-budget {format_bytes(budget)} is too small for d={dim}, k={k}: "
            f"need at least {format_bytes(fixed + per_row * QUERY_TILE)}"
        )
    rows = (room // per_row) // QUERY_TILE * QUERY_TILE
    rows = int(min(rows, -(-n_gallery // QUERY_TILE) * QUERY_TILE))
    return BlockPlan(
        gallery_rows=max(QUERY_TILE, rows),
        reference_rows=DATABASE_TILE * workers,
        fixed_bytes=fixed,
        per_gallery_row_bytes=per_row,
    )
