"""Folders of ``.npy`` shards as one embedding matrix (the autofaiss / clip-retrieval layout).

``emb/0.npy, emb/1.npy, ...`` (or ``img_emb_0.npy, ...``) are read in the
numeric order of the number at the end of each file name, memory-mapped, so a
folder larger than memory streams in blocks like a single file.  Optional ids
beside the shards: ``ids.txt`` (one id per line) or ``ids.npy`` (a 1-D string
array), covering all rows in shard order.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError, MismatchError
from nnn_cli.data.npy import NpyRows
from nnn_cli.data.sources import EmbeddingSource

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
ID_FILES = ("ids.txt", "ids.npy")


class _ConcatRows:
    """Row-slicing view over memory-mapped shards: ``view[a:b]`` gathers rows across shard boundaries."""

    def __init__(self, paths: tuple[Path, ...], offsets: np.ndarray):
        self.maps = [NpyRows(p) for p in paths]
        self.offsets = offsets  # (n_shards + 1,) cumulative row counts

    def close(self) -> None:
        for shard in self.maps:
            shard.close()

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(int(self.offsets[-1]))
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        for s in range(max(first, 0), len(self.maps)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            parts.append(self.maps[s][max(start, lo) - lo:min(stop, hi) - lo])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=0)


@dataclass
class ShardedSource(EmbeddingSource):
    """An :class:`EmbeddingSource` over a folder of ``.npy`` shards (same interface, kind ``"shards"``)."""

    shard_paths: tuple[Path, ...] = field(default=(), repr=False)
    offsets: np.ndarray | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def _raw(self):
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
            raise InputError(f"{folder}: shard {p.name} has no number at the end of its name; name shards "
                             "0.npy, 1.npy, ... (or PREFIX_0.npy, ...) so their order is defined")
        numbered.append((match.group(1), int(match.group(2)), p))
    if not numbered:
        raise InputError(f"{folder}: a folder, but it holds no .npy shards (expected 0.npy, 1.npy, ...)")
    prefixes = {prefix for prefix, _, _ in numbered}
    if len(prefixes) > 1:
        raise InputError(f"{folder}: shards with different name prefixes ({', '.join(sorted(prefixes))}); "
                         "keep one set of shards per folder")
    numbers = [n for _, n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"{folder}: two shards carry the same number")
    return [p for _, _, p in sorted(numbered, key=lambda t: t[1])]


def _shard_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path}: not a readable numeric .npy shard ({str(exc).splitlines()[0][:120]})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy shard ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: not a .npy array")
    return tuple(arr.shape), arr.dtype


def _read_ids(folder: Path, n: int) -> np.ndarray | None:
    txt, npy = folder / "ids.txt", folder / "ids.npy"
    if txt.exists():
        ids = np.asarray(txt.read_text(encoding="utf-8").splitlines(), dtype=object)
        source = txt
    elif npy.exists():
        try:
            raw = np.load(npy, allow_pickle=False)
        except ValueError:
            raise InputError(f"{npy}: ids must be a numeric or string array (pickles are refused)") from None
        ids = np.asarray([str(v) for v in raw.reshape(-1)], dtype=object)
        source = npy
    else:
        return None
    if len(ids) != n:
        raise MismatchError(f"{source}: holds {len(ids)} ids but the shards hold {n} rows")
    return ids


def open_shard_folder(folder: str | Path, label: str = "embeddings") -> ShardedSource:
    """Open a folder of ``.npy`` shards as one (N, d) source; checks every shard's header."""
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
        raise InputError(f"{folder}: shards have different dtypes ({', '.join(sorted(map(str, dtypes)))}); "
                         "store them all as float16 or all as float32")
    offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    shape = (int(offsets[-1]), dims.pop())
    src = ShardedSource(folder, None, "shards", shape, dtypes.pop(), label,
                        shard_paths=tuple(paths), offsets=offsets)
    src._ids = _read_ids(folder, shape[0])
    return src
