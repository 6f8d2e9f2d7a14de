"""`nnn embed`: raw texts or images -> an embedding file, in batches, resumable.

:func:`embed_input` streams the records of an :class:`~nnn_cli.embed.readers.InputSource` through an
:class:`~nnn_cli.embed.encoders.Encoder` batch by batch, L2-normalises each row in float32, and
appends it to the partial output (:mod:`nnn_cli.embed.store`: committed with counts and checksums
after each durable flush, verified before a resume).  Empty items, unreadable
images and vectors the model returns as zero or non-finite are skipped and listed, never fatal.
Records are committed a batch at a time, so an interrupted run resumes at the first
uncommitted batch; ``max_batches`` stops on purpose after that many batches (the same state an
interruption leaves).

The input is scanned once (count, checks and content hash in one pass, :meth:`InputSource.scan`)
and then embedded; stdin and pipes were already copied once to a temporary file by
:func:`~nnn_cli.embed.readers.open_input`, so they are never read twice.  A run on piped input
resumes only when the same bytes are piped again (the partial file is keyed by their hash).
``output="-"`` writes the finished file (HDF5 by default, or ``.npy`` bytes) to a binary stream.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.embed.encoders import Encoder
from nnn_cli.embed.readers import InputSource, Record
from nnn_cli.embed.store import PartialStore, check_embed_output, partial_path, sidecar_path
from nnn_cli.errors import InputError, NNNError, ParameterError

SkipCallback = Callable[[str, str], None]
ProgressCallback = Callable[[int, int], None]


@dataclass
class EmbedSummary:
    """What a run did; ``complete`` is False when it stopped early (``max_batches``)."""

    output: str
    complete: bool
    n_records: int
    n_embedded: int
    n_skipped: int
    dim: int | None
    resumed_records: int
    encoded_now: int
    seconds: float
    attrs: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)
    discarded_partial: str | None = None

    @property
    def items_per_second(self) -> float:
        return self.encoded_now / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "complete": self.complete,
            "n_records": self.n_records,
            "n_embedded": self.n_embedded,
            "n_skipped": self.n_skipped,
            "dim": self.dim,
            "resumed_records": self.resumed_records,
            "encoded_now": self.encoded_now,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 2),
            "model": self.attrs.get("model"),
            "modality": self.attrs.get("modality"),
            "dtype": self.attrs.get("dtype"),
            "backend": self.attrs.get("backend"),
            "quantization": self.attrs.get("quantization"),
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
            "discarded_partial": self.discarded_partial,
        }


def resume_key(source: InputSource, encoder: Encoder, dtype: str) -> dict:
    """What must be equal for a partial file to be continued (device and batch size may change)."""
    desc = encoder.describe()
    return {
        "input": source.identity(),
        "input_kind": source.kind,
        "input_fingerprint": source.fingerprint(),
        "modality": source.modality,
        "model": desc["model"],
        "model_kind": desc["model_kind"],
        "image_size": desc.get("image_size"),
        "dtype": dtype,
    } | _backend_key(desc)


def _backend_key(desc: dict) -> dict:
    """An export backend's identity joins the resume key (torch runs keep the older key, so their partials resume)."""
    if desc.get("backend", "torch") == "torch":
        return {}
    return {key: desc.get(key) for key in ("backend", "quantization", "export_checksum")}


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _decode(encoder: Encoder, record: Record):
    assert record.value is not None  # a record without a value carries a problem and is not decoded
    try:
        return encoder.load_image(Path(record.value)), None
    except FileNotFoundError:
        return None, "no such image file"
    except Exception as exc:
        return None, f"unreadable image ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"


def normalise_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 rows and a mask of the rows that were usable (finite, non-zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    good = np.isfinite(vectors).all(axis=1) & np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(vectors)
    out[good] = vectors[good] / norms[good, None]
    return out, good


def embed_input(
    source: InputSource,
    encoder: Encoder,
    output: str | os.PathLike,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    restart: bool = False,
    progress: ProgressCallback | None = None,
    on_skip: SkipCallback | None = None,
    max_batches: int | None = None,
    workers: int | None = None,
    stream=None,
    stream_format: str = "h5",
    tmp_dir: str | os.PathLike | None = None,
    wait: float = DEFAULT_WAIT,
) -> EmbedSummary:
    """Embed every record of ``source`` into ``output`` (.h5 or .npy), resuming a partial run.

    ``progress(done, total)`` counts input records; ``on_skip(id, reason)`` hears each skipped
    item as it happens.  Raises :class:`InputError` when nothing at all could be embedded.

    ``output="-"``: the finished file is built in a temporary folder (``tmp_dir``, default
    ``$TMPDIR``; never resumed) and its bytes are copied to ``stream`` (default
    ``sys.stdout.buffer``): an HDF5 file with ``embeddings`` and ``ids`` (``stream_format="h5"``)
    or ``.npy`` bytes without ids (``"npy"``).  Nothing is written to the stream unless complete.
    """
    kwargs = dict(
        batch_size=batch_size, dtype=dtype, progress=progress, on_skip=on_skip, max_batches=max_batches, workers=workers
    )
    if str(output) == "-":
        return _embed_to_stream(source, encoder, stream, stream_format, tmp_dir, kwargs)
    output = Path(output)
    check_embed_output(output)
    if batch_size < 1:
        raise ParameterError(f"--batch-size must be at least 1, got {batch_size}")
    if output.is_dir():
        raise ParameterError(f"{output}: is a directory; give a file name for the output")
    if (
        output.exists()
        and source.kind != "folder"
        and not source.streamed
        and output.resolve() == source.path.resolve()
    ):
        raise ParameterError(f"{output}: is also the input; refusing to overwrite it")
    encoder.check_modality(source.modality)
    total, _ = source.scan()  # one pass: count, check every row, hash (for the resume key)
    if total == 0:
        raise InputError(f"{source.name}: no items to embed")

    store = PartialStore.open(output, resume_key(source, encoder, dtype), dtype, restart, wait)
    resumed = store.records_done
    encoded_now = 0
    t0 = time.perf_counter()
    n_workers = workers or min(4, os.cpu_count() or 1)
    try:
        if progress:
            progress(resumed, total)
        records = itertools.islice(source.records(), resumed, None)
        stopped = False
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for number, batch in enumerate(_batches(records, batch_size)):
                if max_batches is not None and number >= max_batches:
                    stopped = True
                    break
                encoded_now += _embed_batch(batch, source.modality, encoder, store, pool, on_skip)
                if progress:
                    progress(store.records_done, total)
        complete = store.records_done >= total
        if not complete and not stopped:
            raise InputError(
                f"{source.name}: ended after {store.records_done} of {total} items; "
                "the input changed while it was being read"
            )
        seconds = time.perf_counter() - t0
        attrs = _output_attrs(source, encoder, store, dtype, batch_size)
        summary = EmbedSummary(
            output=str(output),
            complete=complete,
            n_records=total,
            n_embedded=store.rows,
            n_skipped=store.n_skipped,
            dim=store.dim,
            resumed_records=resumed,
            encoded_now=encoded_now,
            seconds=seconds,
            attrs=attrs,
            skipped=store.skipped_items(limit=1000),
            discarded_partial=store.discarded,
        )
        if not complete:
            store.close()
            return summary
        if store.rows == 0:
            first = summary.skipped[0] if summary.skipped else ("?", "?")
            store.discard()
            raise InputError(
                f"{source.name}: nothing could be embedded: all {total} items were skipped "
                f"(first: {first[0]!r}, {first[1]})"
            )
        store.finish(output, attrs)
        return summary
    except NNNError:
        if store.is_open and store.records_done == 0:
            store.discard()  # bad input or model before anything was committed: leave no file behind
        else:
            store.close()  # committed (verified) batches stay for a rerun, also after a full disk
        raise
    except BaseException:
        store.close()  # interrupted: keep the committed batches for a resumed run
        raise


def _embed_to_stream(
    source: InputSource, encoder: Encoder, stream, stream_format: str, tmp_dir, kwargs
) -> EmbedSummary:
    """``embed_input(..., output="-")``: build the file in a private temporary folder, then copy it out."""
    if stream_format not in ("h5", "npy"):
        raise ParameterError(f"unknown output format {stream_format!r} for '-': use h5 or npy")
    folder = Path(tempfile.mkdtemp(prefix="nnn-embed-out-", dir=tmp_dir))
    try:
        tmp_out = folder / f"embeddings.{stream_format}"
        summary = embed_input(source, encoder, tmp_out, restart=True, **kwargs)
        summary.output = "-"
        if summary.complete:
            out = stream if stream is not None else sys.stdout.buffer
            with open(tmp_out, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            out.flush()
        return summary
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _embed_batch(
    batch: list[Record],
    modality: str,
    encoder: Encoder,
    store: PartialStore,
    pool: ThreadPoolExecutor,
    on_skip: SkipCallback | None,
) -> int:
    """Encode one batch, append its rows and skipped items, commit; returns how many were encoded."""
    skipped: list[tuple[str, str]] = []
    ids: list[str] = []
    items: list = []
    if modality == "image":
        decoded = pool.map(lambda r: _decode(encoder, r) if r.problem is None else (None, r.problem), batch)
        for record, (image, problem) in zip(batch, decoded):
            if problem is None:
                ids.append(record.id)
                items.append(image)
            else:
                skipped.append((record.id, problem))
    else:
        for record in batch:
            if record.problem is None:
                ids.append(record.id)
                items.append(str(record.value))
            else:
                skipped.append((record.id, record.problem))
    vectors = np.zeros((0, store.dim or 0), dtype=np.float32)
    if items:
        raw = encoder.encode_images(items) if modality == "image" else encoder.encode_texts(items)
        if len(raw) != len(items):
            raise InputError(f"model {encoder.name} returned {len(raw)} vectors for a batch of {len(items)} items")
        vectors, good = normalise_rows(raw)
        if not good.all():
            skipped.extend((ids[i], "the model returned a zero or non-finite vector") for i in np.flatnonzero(~good))
            ids = [ident for ident, ok in zip(ids, good) if ok]
            vectors = vectors[good]
    if on_skip:
        for ident, reason in skipped:
            on_skip(ident, reason)
    store.append(vectors, ids, skipped, len(batch))
    return len(items)


def _output_attrs(source: InputSource, encoder: Encoder, store: PartialStore, dtype: str, batch_size: int) -> dict:
    from nnn_cli.data.provenance import base_attrs

    desc = encoder.describe()
    return base_attrs(
        "embeddings",
        model=desc["model"],
        model_kind=desc["model_kind"],
        modality=source.modality,
        dim=store.dim,
        normalization="l2",
        dtype=dtype,
        device=desc["device"],
        precision=desc["precision"],
        image_size=desc.get("image_size"),
        batch_size=batch_size,
        input_path=source.name,
        input_kind=source.kind,
        input_fingerprint=store.key["input_fingerprint"],
        n_embedded=store.rows,
        n_skipped=store.n_skipped,
        **embedding_recipe(desc),
    )


def embedding_recipe(desc: dict) -> dict:
    """How the vectors were computed (``nnn info`` shows it; search/eval/bias warn when inputs differ):
    ``backend`` (torch, onnx, openvino), ``quantization`` and, for an export, its checksums."""
    out = {"backend": desc.get("backend", "torch"), "quantization": desc.get("quantization", "none")}
    for key in ("export_checksum", "model_checksum"):
        if desc.get(key):
            out[key] = desc[key]
    return out


__all__ = ["EmbedSummary", "embed_input", "normalise_rows", "resume_key", "partial_path", "sidecar_path"]
