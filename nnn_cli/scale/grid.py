"""The fixed tile grid of a blocked run: blocks of one side x partitions of the other, pure data.

Bias: gallery blocks x reference partitions; search: query blocks x gallery partitions.  Block and
partition sizes are multiples of the GEMM tiles of :mod:`nnn_cli.core.topk` (1024 query rows x 8192
database rows), so every task computes the same tiles at the same global coordinates as the in-memory
engine, and the merged results are byte-identical to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nnn_cli.core.topk import DATABASE_TILE, DEFAULT_QUERY_BLOCK, QUERY_TILE
from nnn_cli.errors import ParameterError

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE
"""Gallery rows per block of a bias run (65,536)."""

DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE
"""Reference rows (bias) or gallery rows (search) per partition (1,048,576)."""

STREAM_ROWS = 8 * DATABASE_TILE
"""Reference rows fetched per read inside a task."""

DEFAULT_SEARCH_BLOCK_ROWS = DEFAULT_QUERY_BLOCK
"""Query rows per block of a search run."""


@dataclass(frozen=True)
class Plan:
    n_rows: int  # gallery rows (bias) or query rows (search): the blocked side
    n_stream: int  # reference rows (bias) or gallery rows (search): the partitioned side
    block_rows: int
    partition_rows: int

    @property
    def blocks(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_rows, s + self.block_rows)) for s in range(0, self.n_rows, self.block_rows)]

    @property
    def partitions(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_stream, s + self.partition_rows)) for s in range(0, self.n_stream, self.partition_rows)]

    def as_dict(self) -> dict:
        return {
            "n_rows": self.n_rows,
            "n_stream": self.n_stream,
            "block_rows": self.block_rows,
            "partition_rows": self.partition_rows,
            "blocks": len(self.blocks),
            "partitions": len(self.partitions),
            "tasks": len(self.blocks) * len(self.partitions),
        }


def round_up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m`` (at least ``m``)."""
    return max(m, -(-int(n) // m) * m)


def make_plan(
    n_rows: int,
    n_stream: int,
    block_rows: int,
    partition_rows: int,
    block_multiple: int = QUERY_TILE,
    partition_multiple: int = DATABASE_TILE,
) -> Plan:
    """A plan on the fixed tile grid: block sizes a multiple of ``block_multiple``, partitions of ``partition_multiple``."""
    block_rows, partition_rows = int(block_rows), int(partition_rows)
    if block_rows < 1 or block_rows % block_multiple:
        raise ParameterError(f"--block-rows must be a positive multiple of {block_multiple}, got {block_rows}")
    if partition_rows < 1 or partition_rows % partition_multiple:
        raise ParameterError(
            f"--partition-rows must be a positive multiple of {partition_multiple}, got {partition_rows}"
        )
    return Plan(int(n_rows), int(n_stream), block_rows, partition_rows)


def bias_plan(n_gallery: int, n_reference: int, block_rows: int | None, partition_rows: int | None) -> Plan:
    """The exact bias grid: blocks no larger than the gallery (rounded to tiles), partitions likewise."""
    return make_plan(
        n_gallery,
        n_reference,
        min(block_rows or DEFAULT_BLOCK_ROWS, round_up(n_gallery, QUERY_TILE)),
        min(partition_rows or DEFAULT_PARTITION_ROWS, round_up(n_reference, DATABASE_TILE)),
    )
