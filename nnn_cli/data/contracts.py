"""The two interfaces every input and output of a job at size goes through: :class:`Source` and :class:`Sink`.

A job at size (``nnn bias``, ``nnn search``) is one pipeline::

    open sources -> validate (headers, dims, options; the sink's target reachable) -> plan (blocks x partitions)
    -> scheduler.run(plan, task)   (nnn_cli.scale.scheduler: local threads or Ray tasks, the same plan)
    -> sink.commit(...)

A new kind of input (a database table, a new file format) is a :class:`Source`; a new kind of output (a
table, a store) is a :class:`Sink`.  Neither knows where the blocks run, and the scheduler knows neither
kind by name.  The promises live here once:

* a Source validates what it returns (finite, non-zero rows; cosine rows normalised) and is *picklable*
  (it holds names, shapes and options, never open handles), so a task on another machine reads just its
  rows; its ``name`` is what the user wrote (a URL stays a URL, ``s3://b/x`` never becomes ``s3:/b/x``);
* a Sink checks its target in :meth:`Sink.check` (name, scheme, credentials, reachability within the
  I/O timeout, an earlier run there) *without writing anything*, so a run refused there leaves nothing that
  blocks the next; :meth:`Sink.kept_blocks` says what an earlier run left that verifies (resume); blocks are
  written by :meth:`Sink.put_block` (inside a task when ``remote_writes``, so the sink is picklable too) and
  recorded with their rows and checksums; nothing is visible to readers before :meth:`Sink.commit`, and
  :meth:`Sink.abort` removes what a fresh run wrote when it failed on bad input.

Implementations: sources in :mod:`nnn_cli.data.sources` (HDF5, ``.npy``, shard folders, stdin) and
:mod:`nnn_cli.data.objstore` (URLs, read by ranges); sinks in :mod:`nnn_cli.data.sinks` (a bias file
``.h5``/``.npy``; a run folder ``manifest.json`` + ``blocks/``, local or behind a URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    """An (N, d) embedding matrix read in validated float32 rows."""

    label: str
    """What it is in this run ("gallery", "reference", "queries"), used in messages."""
    shape: tuple[int, int]
    dtype: np.dtype

    @property
    def name(self) -> str:
        """Where it is, as the user wrote it (a path, ``FILE.h5:DATASET``, a URL, a table name)."""
        ...

    @property
    def n(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def ids(self) -> np.ndarray | None:
        """Row ids (object array of str), or None."""
        ...

    def rows(self, start: int, stop: int, metric: str = "cosine", hasher: Any = None) -> np.ndarray:
        """Rows ``[start, stop)`` as float32, checked (no NaN/Inf, no zero rows) and L2-normalised for cosine.

        Called inside tasks, on any machine: reads only those rows.  ``hasher`` (hashlib), when given, is fed
        the stored bytes (a content hash for free while reading)."""
        ...

    def iter_blocks(
        self, metric: str = "cosine", block_rows: int = ..., fingerprint: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` over the whole matrix, each block as :meth:`rows` returns it (``fingerprint``: the
        content hash may be taken on the way; False for a pass beside another that takes it)."""
        ...

    def fingerprint_rows(self, start: int, stop: int) -> str:
        """Content hash (blake2b of shape, dtype and stored bytes) of rows ``[start, stop)``.

        ``fingerprint_rows(0, n)`` is the full content fingerprint a bias file records; a run folder records
        one per block (computed by the task that reads those rows anyway), so a changed middle row is caught."""
        ...


@dataclass
class BlockRecord:
    """What a sink keeps about one committed block: its global rows, where it is, and checksums of what it wrote.

    ``inputs`` holds the content hashes of the input rows the block was computed from (e.g. the gallery
    rows' :meth:`Source.fingerprint_rows`), so a resume can tell a changed input block from an unchanged one.
    """

    block: int
    rows: tuple[int, int]
    files: dict[str, str] = field(default_factory=dict)  # role ("bias", "topk") -> path inside the sink
    checksums: dict[str, str] = field(default_factory=dict)  # role -> blake2b of the stored bytes
    inputs: dict[str, str] = field(default_factory=dict)  # input role -> content hash of its rows
    info: dict[str, Any] = field(default_factory=dict)  # timings, devices (not checked)

    def to_dict(self) -> dict:
        return {
            "rows": [int(self.rows[0]), int(self.rows[1])],
            "files": dict(self.files),
            "checksums": dict(self.checksums),
            "inputs": dict(self.inputs),
            **self.info,
        }


@runtime_checkable
class Sink(Protocol):
    """Where a job's per-block results go and are committed (the pipeline's calls, in order:
    ``check``, ``kept_blocks``, ``put_block``/``record`` per block, ``commit``; ``abort`` on bad input)."""

    remote_writes: bool
    """True: :meth:`put_block` runs inside the tasks (a run folder, a table); False: the tasks return the arrays
    and the driver calls it (a bias file gathered in memory)."""

    @property
    def target(self) -> str:
        """The output as the user wrote it (a path or a URL; never turned into a ``pathlib.Path``)."""
        ...

    def check(self, resume: bool) -> dict | None:
        """Check the target before any work and write nothing.

        Raises a one-line :class:`~nnn_cli.errors.NNNError` naming the target for a bad name or scheme,
        missing credentials, an unreachable or silent endpoint (within the I/O timeout), or an earlier run there
        when not ``resume``.  Returns that earlier run's header (its manifest), or None."""
        ...

    def kept_blocks(self, old: dict | None, header: dict, block_inputs: dict[int, str]) -> dict[int, BlockRecord]:
        """Start this run's record from ``header`` (kind, inputs with content hashes, params, plan) and return
        the blocks of ``old`` to keep: same params and plan, same reference, files that verify (checksums, shape,
        finite values) and gallery rows whose hash equals ``block_inputs[block]``.  The others are computed."""
        ...

    def put_block(self, block: int, rows: tuple[int, int], arrays: dict[str, np.ndarray]) -> BlockRecord:
        """Store one block's arrays (``bias`` (rows,), ``topk`` (rows, k)); return its record with checksums."""
        ...

    def record(self, rec: BlockRecord) -> None:
        """On the driver, as each block finishes: remember it (a run folder saves progress for --resume)."""
        ...

    def commit(self, attrs: dict) -> None:
        """Make the result visible to readers, whole (atomic rename, one manifest PUT, a transaction)."""
        ...

    def abort(self) -> None:
        """After a failure on bad input: remove what this run wrote (only when it started the target)."""
        ...


__all__ = ["BlockRecord", "Sink", "Source"]
