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
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nnn_cli.errors import InputError, ParameterError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
MODALITIES = ("text", "image")


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

    def count(self) -> int:
        """Number of records (one pass; the progress total, and a check of the whole file)."""
        if self.kind == "folder":
            return sum(1 for _ in _walk_images(self.path))
        return sum(1 for _ in self.records())  # parses everything: bad rows fail before any work

    def fingerprint(self) -> str:
        """A hash identifying the input (content of a file; names, sizes, times of a folder)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.kind}|{self.modality}|{self.text_column}|{self.id_column}".encode())
        if self.kind == "folder":
            for rel, full in _walk_images(self.path):
                st = full.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            with open(self.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    # -- per-format readers ----------------------------------------------
    def _value(self, raw: str) -> str | Path:
        if self.modality == "image":
            p = Path(raw)
            return p if p.is_absolute() else self.path.parent / p
        return raw

    def _line_records(self) -> Iterator[Record]:
        with _open_text(self.path) as fh:
            for number, line in enumerate(_read_lines(fh, self.path), start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    yield Record(str(number), None, "empty line")
                else:
                    yield Record(str(number), self._value(text))

    def _jsonl_records(self) -> Iterator[Record]:
        with _open_text(self.path) as fh:
            row = 0
            for number, line in enumerate(_read_lines(fh, self.path), start=1):
                if not line.strip():
                    continue
                row += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{self.path}: line {number} is not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{self.path}: line {number} is not a JSON object")
                yield self._from_row(obj, row, number)

    def _table_records(self) -> Iterator[Record]:
        delimiter = "\t" if self.kind == "tsv" else ","
        with _open_text(self.path, newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            try:
                header = reader.fieldnames
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{self.path}: not a readable {self.kind.upper()} file ({exc})") from None
            if not header:
                raise InputError(f"{self.path}: empty table (no header row)")
            self._check_columns(header)
            try:
                for row, obj in enumerate(reader, start=1):
                    yield self._from_row(obj, row, row + 1)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InputError(f"{self.path}: not a readable {self.kind.upper()} file ({exc})") from None

    def _check_columns(self, header) -> None:
        if self.text_column not in header:
            raise InputError(f"{self.path}: no column {self.text_column!r} (columns: {', '.join(header)}); "
                             "choose one with --text-column")
        if self.id_column is not None and self.id_column not in header:
            raise InputError(f"{self.path}: no column {self.id_column!r} (columns: {', '.join(header)}); "
                             "choose one with --id-column")

    def _from_row(self, obj: dict, row: int, line: int) -> Record:
        id_col = self.id_column if self.id_column is not None else ("id" if "id" in obj else None)
        if id_col is not None and id_col not in obj:
            raise InputError(f"{self.path}: line {line} has no {id_col!r} field (choose one with --id-column)")
        ident = str(obj[id_col]) if id_col is not None else str(row)
        if self.text_column not in obj:
            if self.kind == "jsonl":
                raise InputError(f"{self.path}: line {line} has no {self.text_column!r} field "
                                 f"(fields: {', '.join(map(str, obj))}); choose one with --text-column")
        value = obj.get(self.text_column)
        if value is None or not str(value).strip():
            return Record(ident, None, f"empty {self.text_column!r}")
        if not isinstance(value, str):
            value = str(value)
        return Record(ident, self._value(value))


def _read_lines(fh, path: Path) -> Iterator[str]:
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _open_text(path: Path, newline: str | None = None):
    try:
        return open(path, encoding="utf-8", newline=newline)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


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


def open_input(path: str | os.PathLike, modality: str | None = None, text_column: str = "text",
               id_column: str | None = None) -> InputSource:
    """Check ``path`` and say how to read it; ``modality`` None means image for a folder, else text."""
    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise ParameterError(f"unknown modality {modality!r}: use text or image")
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
    kind = TABLE_SUFFIXES.get(path.suffix.lower(), "lines")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{path}: is one image; give the folder that holds the images")
    return InputSource(path, kind, modality or "text", text_column, id_column)
