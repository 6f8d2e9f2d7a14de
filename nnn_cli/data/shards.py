"""Folders of ``.npy`` shards as one embedding matrix (the autofaiss / clip-retrieval layout).

``emb/0.npy, emb/1.npy, ...`` (or ``img_emb_0.npy, ...``) are read in the
numeric order of the number at the end of each file name, memory-mapped, so a
folder larger than memory streams in blocks like a single file.  Optional ids
beside the shards: ``ids.txt`` (one id per line) or ``ids.npy`` (a 1-D string
array), covering all rows in shard order.

clip-retrieval's layout is read as it is written::

    OUT/embeddings/img_emb/img_emb_0.npy, img_emb_1.npy, ...   (float16)
    OUT/embeddings/text_emb/text_emb_0.npy, ...
    OUT/metadata/metadata_0.parquet, metadata_1.parquet, ...  (one row per embedding row)

Given ``OUT/embeddings/img_emb`` (or ``text_emb``), the ids come from the parquet files
``OUT/metadata/metadata_N.parquet`` (matched to the shards by N, row counts checked), column
``ids_column``; by default the first of :data:`DEFAULT_ID_COLUMNS` the metadata has
(``image_path`` for a folder of files, ``url`` for a web dataset, then ``key``, ``id``,
``caption``).  Reading parquet needs pyarrow (the ``parquet`` extra); without it the ids are
left out with a note (or a :class:`DependencyError` when ``ids_column`` was asked for).
An explicit ``ids_file`` overrides both.  Given ``OUT`` or ``OUT/embeddings``, the error names
the shard folders inside (``img_emb/``, ``text_emb/``).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.data.npy import NpyRows, load_npy
from nnn_cli.data.parquet import DEFAULT_ID_COLUMNS, PARQUET_HINT, _pyarrow_parquet, parquet_ids
from nnn_cli.data.sources import EmbeddingSource, read_ids_file
from nnn_cli.errors import DependencyError, InputError, MismatchError

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
ID_FILES = ("ids.txt", "ids.npy")


class _ConcatRows:
    """Row-slicing view over ``.npy`` shards: ``view[a:b]`` gathers rows across shard boundaries.

    Shards are opened lazily, when a slice first needs them, and at most ``MAX_OPEN`` stay open (the
    least recently used is closed), so a folder with more shards than ``ulimit -n`` streams fine."""

    MAX_OPEN = 16

    def __init__(self, paths: tuple[Path, ...], offsets: np.ndarray):
        self.paths = tuple(paths)
        self.open_maps: dict[int, NpyRows] = {}  # shard number -> open reader, in least-recent-use order
        self.offsets = offsets  # (n_shards + 1,) cumulative row counts

    def close(self) -> None:
        for shard in self.open_maps.values():
            shard.close()
        self.open_maps.clear()

    def _shard(self, s: int) -> NpyRows:
        shard = self.open_maps.pop(s, None)
        if shard is None:
            while len(self.open_maps) >= self.MAX_OPEN:
                self.open_maps.pop(next(iter(self.open_maps))).close()
            shard = NpyRows(self.paths[s])
        self.open_maps[s] = shard
        return shard

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(int(self.offsets[-1]))
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        for s in range(max(first, 0), len(self.paths)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            parts.append(self._shard(s)[max(start, lo) - lo : min(stop, hi) - lo])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=0)


@dataclass
class ShardedSource(EmbeddingSource):
    """An :class:`EmbeddingSource` over a folder of ``.npy`` shards (same interface, kind ``"shards"``)."""

    shard_paths: tuple[Path, ...] = field(default=(), repr=False)
    offsets: np.ndarray | None = field(default=None, repr=False)
    ids_source: str | None = None  # where the ids came from (for messages and `nnn info`)
    notes: list = field(default_factory=list)  # one-line notes for the user (e.g. parquet ids skipped)

    @contextlib.contextmanager
    def _raw(self):
        assert self.offsets is not None  # set by open_shard_folder
        rows = _ConcatRows(self.shard_paths, self.offsets)
        try:
            yield rows
        finally:
            rows.close()


def shard_files(folder: Path) -> list[Path]:
    """The ``.npy`` shards of ``folder`` in numeric order of the number ending each name."""
    numbered = []
    for p in folder.glob("*.npy"):
        if p.name in ID_FILES:
            continue
        match = _NUMBERED.match(p.stem)
        if not match:
            raise InputError(
                f"{folder}: shard {p.name} has no number at the end of its name; name shards "
                "0.npy, 1.npy, ... (or PREFIX_0.npy, ...) so their order is defined"
            )
        numbered.append((match.group(1), int(match.group(2)), p))
    if not numbered:
        inner = _shard_subfolders(folder)
        if inner:
            listed = ", ".join(f"{p.relative_to(folder).as_posix()}/ ({n} shards)" for p, n in inner)
            raise InputError(
                f"{folder}: holds no .npy shards itself, but {listed} "
                f"{'does' if len(inner) == 1 else 'do'}: give one of them, e.g. {inner[0][0]}"
            )
        raise InputError(f"{folder}: a folder, but it holds no .npy shards (expected 0.npy, 1.npy, ...)")
    prefixes = {prefix for prefix, _, _ in numbered}
    if len(prefixes) > 1:
        raise InputError(
            f"{folder}: shards with different name prefixes ({', '.join(sorted(prefixes))}); "
            "keep one set of shards per folder"
        )
    numbers = [n for _, n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"{folder}: two shards carry the same number")
    return [p for _, _, p in sorted(numbered, key=lambda t: t[1])]


def _shard_subfolders(folder: Path, depth: int = 2) -> list[tuple[Path, int]]:
    """Subfolders (up to ``depth`` levels, sorted) that hold ``.npy`` files, with their counts."""
    found: list[tuple[Path, int]] = []
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return found
    for child in children:
        n = sum(1 for p in child.glob("*.npy") if p.name not in ID_FILES)
        if n:
            found.append((child, n))
        elif depth > 1:
            found.extend(_shard_subfolders(child, depth - 1))
    return found


def _shard_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    arr = load_npy(path, "shard", mmap=True)
    return tuple(arr.shape), arr.dtype


def metadata_files(folder: Path, shard_paths: list[Path]) -> list[Path] | None:
    """clip-retrieval's ``../../metadata/metadata_N.parquet`` for the shards ``*_N.npy``, or None.

    Looked for when ``folder`` is ``OUT/embeddings/<name>``; every shard number must have its file.
    """
    meta = folder.parent.parent / "metadata" if folder.parent.name == "embeddings" else folder / "metadata"
    if not meta.is_dir():
        return None
    by_number = {}
    for p in meta.glob("*.parquet"):
        match = _NUMBERED.match(p.stem)
        if match:
            by_number[int(match.group(2))] = p
    if not by_number:
        return None
    numbers = []
    for p in shard_paths:
        match = _NUMBERED.match(p.stem)
        assert match is not None  # shard_files lists numbered names only
        numbers.append(int(match.group(2)))
    missing = [n for n in numbers if n not in by_number]
    if missing:
        raise InputError(
            f"{meta}: no metadata parquet file for shard number(s) {', '.join(map(str, missing[:5]))} "
            f"of {folder}; pass the ids with --ids FILE instead"
        )
    return [by_number[n] for n in numbers]


def _read_ids(
    folder: Path, n: int, paths: list[Path], rows: list[int], ids_file, ids_column, notes: list
) -> tuple[np.ndarray | None, str | None]:
    if ids_file is not None:
        return read_ids_file(ids_file, n, f"{folder} (shards)", ids_column), str(ids_file)
    txt, npy = folder / "ids.txt", folder / "ids.npy"
    if txt.exists() or npy.exists():
        source = txt if txt.exists() else npy
        return read_ids_file(source, n, f"{folder} (shards)"), str(source)
    meta = metadata_files(folder, paths)
    if meta is None:
        if ids_column is not None:
            raise InputError(
                f"{folder}: --ids-column {ids_column!r} given, but there is no metadata/*.parquet "
                "for these shards (clip-retrieval writes OUT/metadata beside OUT/embeddings)"
            )
        return None, None
    try:
        ids = parquet_ids(meta, ids_column, n, str(folder), rows)
    except DependencyError:
        if ids_column is not None:
            raise
        notes.append(
            f"note: {folder}: ids in {meta[0].parent}/*.parquet not read (needs pyarrow: {PARQUET_HINT}); "
            "using row numbers"
        )
        return None, None
    column = ids_column or _first_column(meta[0])
    return ids, f"{meta[0].parent}/*.parquet column {column}"


def _first_column(path: Path) -> str:
    names = list(_pyarrow_parquet().read_schema(path).names)
    return next((c for c in DEFAULT_ID_COLUMNS if c in names), names[0] if names else "?")


def open_shard_folder(
    folder: str | Path,
    label: str = "embeddings",
    ids_file: str | os.PathLike | None = None,
    ids_column: str | None = None,
) -> ShardedSource:
    """Open a folder of ``.npy`` shards as one (N, d) source; checks every shard's header.

    Ids: ``ids_file``, else ``ids.txt``/``ids.npy`` in the folder, else clip-retrieval's parquet
    metadata (``ids_column``, see the module docstring), else none (row numbers).
    """
    folder = Path(folder)
    paths = shard_files(folder)
    rows, dims, dtypes = [], set(), set()
    for p in paths:
        shape, dtype = _shard_header(p)
        if len(shape) != 2:
            raise InputError(f"{p}: expected a 2-D shard (rows, d), got shape {shape}")
        if dtype.kind != "f":
            raise InputError(f"{p}: dtype {dtype} is not floating point; store float16 or float32")
        rows.append(shape[0])
        dims.add(shape[1])
        dtypes.add(dtype)
    if len(dims) > 1:
        raise MismatchError(f"{folder}: shards have different dimensions ({', '.join(map(str, sorted(dims)))})")
    if len(dtypes) > 1:
        raise InputError(
            f"{folder}: shards have different dtypes ({', '.join(sorted(map(str, dtypes)))}); "
            "store them all as float16 or all as float32"
        )
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    shape = (int(offsets[-1]), dims.pop())
    src = ShardedSource(folder, None, "shards", shape, dtypes.pop(), label, shard_paths=tuple(paths), offsets=offsets)
    src._ids, src.ids_source = _read_ids(folder, shape[0], paths, rows, ids_file, ids_column, src.notes)
    return src
