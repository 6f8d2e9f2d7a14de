"""Input readers for `nnn embed`: raw items as a stream of :class:`Record` (id, value).

Supported inputs (chosen by :func:`open_input`):

- a text file, one item a line; ids are 1-based line numbers (``"1"``, ``"2"``...);
- JSON lines (``.jsonl``/``.ndjson``) or a table (``.csv``/``.tsv``), one item a row; the
  item is in ``text_column`` (default ``text``), the id in ``id_column`` (default: ``id``
  when the file has it, else the 1-based row number);
- a folder of images, walked recursively (a folder's files sorted by name, then its subfolders
  sorted by name: streaming, deterministic); ids are the paths relative to the folder
  (``/``-separated).  Symbolic links that point outside the folder are skipped, and
  linked folders are not followed.

With ``modality='image'`` a table or text file may also list image paths (relative paths are
taken from the input file's folder).  Records keep their input order, so a resumed run can
skip the first ``n`` records without reading the items again.  Empty items come out as records
with ``problem`` set, for the caller to skip and list.

Inputs that can be read only once (``-`` for stdin, ``/dev/stdin``, a pipe, a named pipe
(FIFO), a process substitution ``<(...)``) are copied once, while being hashed, into a private
temporary file (:func:`spool_stream`), and read from there: the item count, the checks and the
embedding pass never touch the pipe again.  Their kind comes from ``input_format`` (default:
one item a line).  A regular file is read twice: one pass that counts, checks and hashes
(:meth:`InputSource.scan`), then the embedding pass.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nnn_cli.data.npy import is_read_once
from nnn_cli.errors import InputError, ParameterError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
MODALITIES = ("text", "image")
INPUT_FORMATS = ("lines", "jsonl", "csv", "tsv")
STDIN = "-"


@dataclass(frozen=True)
class Record:
    """One input item: its id, its value (a string or an image path), or why it must be skipped."""

    id: str
    value: str | Path | None
    problem: str | None = None


@dataclass
class InputSource:
    """An input file or folder, ready to be streamed with :meth:`records`."""

    path: Path
    kind: str  # "lines" | "jsonl" | "csv" | "tsv" | "folder"
    modality: str
    text_column: str = "text"
    id_column: str | None = None
    spool: Path | None = None  # where a read-once input (stdin, pipe, FIFO) was copied to
    content_hash: str | None = field(default=None, repr=False)  # blake2b of its bytes, taken while copying
    _scan: tuple[int, str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """How the input is named in messages: ``<stdin>`` for ``-``, else its path."""
        return "<stdin>" if str(self.path) == STDIN else str(self.path)

    @property
    def read_path(self) -> Path:
        """The file that is actually read (the spooled copy of a pipe, else ``path``)."""
        return self.spool if self.spool is not None else self.path

    @property
    def streamed(self) -> bool:
        """True for an input that could be read only once (stdin, pipe, FIFO): it was spooled."""
        return self.spool is not None

    def identity(self) -> str:
        """What a resumed run must match besides the content: the resolved path, or ``<stdin>``/``<pipe>``."""
        if str(self.path) == STDIN:
            return "<stdin>"
        if self.streamed:
            return "<pipe>"  # /dev/fd/63 of a process substitution differs from run to run
        return str(self.path.resolve())

    def close(self) -> None:
        """Remove the spooled copy now (it is also removed when the source is garbage-collected)."""
        if self.spool is not None:
            _remove_spool(self.spool)

    def records(self) -> Iterator[Record]:
        """Yield the records in a fixed order (the order of a resumed run too)."""
        if self.kind == "folder":
            yield from _folder_records(self.path)
        elif self.kind == "lines":
            yield from self._line_records()
        elif self.kind == "jsonl":
            yield from self._jsonl_records()
        else:
            yield from self._table_records()

    def scan(self) -> tuple[int, str]:
        """``(number of records, fingerprint)`` in one pass over the input (remembered).

        Parses everything, so bad rows fail before any work; the fingerprint is a hash of the
        file's bytes (taken while they are parsed) or of a folder's names, sizes and times.
        """
        if self._scan is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(f"{self.kind}|{self.modality}|{self.text_column}|{self.id_column}".encode())
            if self.kind == "folder":
                n = 0
                for rel, full in _walk_images(self.path):
                    st = full.stat()
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    n += 1
            elif self.content_hash is not None:  # spooled: the bytes were hashed while copied
                h.update(self.content_hash.encode())
                n = sum(1 for _ in self.records())
            else:
                content = hashlib.blake2b(digest_size=16)
                n = sum(1 for _ in self._records(content))
                h.update(content.hexdigest().encode())
            self._scan = (n, h.hexdigest())
        return self._scan

    def count(self) -> int:
        """Number of records (the progress total, and a check of the whole file)."""
        return self.scan()[0]

    def fingerprint(self) -> str:
        """A hash identifying the input (content of a file; names, sizes, times of a folder)."""
        return self.scan()[1]

    def _records(self, hasher) -> Iterator[Record]:
        """:meth:`records` of a file, feeding every byte read to ``hasher`` on the way."""
        if self.kind == "lines":
            yield from self._line_records(hasher)
        elif self.kind == "jsonl":
            yield from self._jsonl_records(hasher)
        else:
            yield from self._table_records(hasher)

    # -- per-format readers ----------------------------------------------
    def _value(self, raw: str) -> str | Path:
        if self.modality == "image":
            p = Path(raw)
            return p if p.is_absolute() else self.path.parent / p
        return raw

    def _line_records(self, hasher=None) -> Iterator[Record]:
        with _open_text(self.read_path, self.name, hasher=hasher) as fh:
            for number, line in enumerate(_read_lines(fh, self.name), start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    yield Record(str(number), None, "empty line")
                else:
                    yield Record(str(number), self._value(text))

    def _jsonl_records(self, hasher=None) -> Iterator[Record]:
        with _open_text(self.read_path, self.name, hasher=hasher) as fh:
            row = 0
            for number, line in enumerate(_read_lines(fh, self.name), start=1):
                if not line.strip():
                    continue
                row += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{self.name}: line {number} is not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{self.name}: line {number} is not a JSON object")
                yield self._from_row(obj, row, number)

    def _table_records(self, hasher=None) -> Iterator[Record]:
        delimiter = "\t" if self.kind == "tsv" else ","
        with _open_text(self.read_path, self.name, newline="", hasher=hasher) as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            try:
                header = reader.fieldnames
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{self.name}: not a readable {self.kind.upper()} file ({exc})") from None
            if not header:
                raise InputError(f"{self.name}: empty table (no header row)")
            self._check_columns(header)
            try:
                for row, obj in enumerate(reader, start=1):
                    yield self._from_row(obj, row, row + 1)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{self.name}: not a readable {self.kind.upper()} file ({exc})") from None

    def _check_columns(self, header) -> None:
        if self.text_column not in header:
            raise InputError(
                f"{self.name}: no column {self.text_column!r} (columns: {', '.join(header)}); "
                "choose one with --text-column"
            )
        if self.id_column is not None and self.id_column not in header:
            raise InputError(
                f"{self.name}: no column {self.id_column!r} (columns: {', '.join(header)}); choose one with --id-column"
            )

    def _from_row(self, obj: dict, row: int, line: int) -> Record:
        id_col = self.id_column if self.id_column is not None else ("id" if "id" in obj else None)
        if id_col is not None and id_col not in obj:
            raise InputError(f"{self.name}: line {line} has no {id_col!r} field (choose one with --id-column)")
        ident = str(obj[id_col]) if id_col is not None else str(row)
        if self.text_column not in obj:
            if self.kind == "jsonl":
                raise InputError(
                    f"{self.name}: line {line} has no {self.text_column!r} field "
                    f"(fields: {', '.join(map(str, obj))}); choose one with --text-column"
                )
        value = obj.get(self.text_column)
        if value is None or not str(value).strip():
            return Record(ident, None, f"empty {self.text_column!r}")
        if not isinstance(value, str):
            value = str(value)
        return Record(ident, self._value(value))


def _read_lines(fh, name: str) -> Iterator[str]:
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _HashingReader(io.RawIOBase):
    """A binary file that feeds every byte it reads to ``hasher`` (so parsing also hashes)."""

    def __init__(self, raw, hasher):
        self.raw, self.hasher = raw, hasher

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.hasher.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_text(path: Path, name: str, newline: str | None = None, hasher=None):
    try:
        raw = open(path, "rb", buffering=0)
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    binary = io.BufferedReader(_HashingReader(raw, hasher) if hasher is not None else raw, 1 << 20)
    return io.TextIOWrapper(binary, encoding="utf-8", newline=newline)


def _remove_spool(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def spool_stream(stream, name: str, tmp_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Copy a binary stream once into a private temporary file, hashing it on the way.

    Returns ``(path, blake2b hex digest of the bytes)``; the file lives in its own temporary
    folder (in ``tmp_dir``, default ``$TMPDIR``), removed by :meth:`InputSource.close`.
    """
    folder = Path(tempfile.mkdtemp(prefix="nnn-embed-input-", dir=tmp_dir))
    path = folder / "input"
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "wb") as out:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
    except OSError as exc:
        _remove_spool(path)
        raise InputError(f"{name}: cannot read or copy the input ({exc.strerror or exc})") from None
    except BaseException:
        _remove_spool(path)
        raise
    return path, h.hexdigest()


def _walk_images(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative id, path) of every image under ``root``, sorted, never leaving ``root``."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root or not os.path.isfile(target):
                    continue
            yield full.relative_to(root).as_posix(), full


def _folder_records(root: Path) -> Iterator[Record]:
    for rel, full in _walk_images(root):
        yield Record(rel, full)


def open_input(
    path: str | os.PathLike,
    modality: str | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    input_format: str | None = None,
    stdin=None,
    tmp_dir: str | os.PathLike | None = None,
) -> InputSource:
    """Check ``path`` and say how to read it; ``modality`` None means image for a folder, else text.

    ``path`` may be ``-`` (``stdin``, default ``sys.stdin.buffer``), a pipe, a FIFO or a process
    substitution: those are read exactly once, into a temporary copy (see :func:`spool_stream`).
    ``input_format`` (``lines``, ``jsonl``, ``csv``, ``tsv``) overrides the kind the file name
    suggests; it is how a piped table is read (default for pipes: one item a line).
    """
    if modality is not None and modality not in MODALITIES:
        raise ParameterError(f"unknown modality {modality!r}: use text or image")
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ParameterError(f"unknown input format {input_format!r}: use one of {', '.join(INPUT_FORMATS)}")
    if is_read_once(path):
        return _open_read_once(Path(path), modality, text_column, id_column, input_format, stdin, tmp_dir)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (the input)")
    if path.is_dir():
        if modality == "text":
            raise ParameterError(f"{path}: is a folder of images; use --modality image (or give a text file)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"{path}: folder is not readable")
        return InputSource(path, "folder", "image")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read (permission denied)")
    kind = input_format or TABLE_SUFFIXES.get(path.suffix.lower(), "lines")
    if input_format is None and path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{path}: is one image; give the folder that holds the images")
    return InputSource(path, kind, modality or "text", text_column, id_column)


def _open_read_once(path: Path, modality, text_column, id_column, input_format, stdin, tmp_dir) -> InputSource:
    name = "<stdin>" if str(path) == STDIN else str(path)
    kind = input_format or TABLE_SUFFIXES.get(path.suffix.lower(), "lines")
    if str(path) == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        spool, digest = spool_stream(stream, name, tmp_dir)
    else:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
        with fh:
            spool, digest = spool_stream(fh, name, tmp_dir)
    source = InputSource(path, kind, modality or "text", text_column, id_column, spool=spool, content_hash=digest)
    weakref.finalize(source, _remove_spool, spool)
    return source
