"""Read the local files users download (parquet, JSON Lines, JSON, CSV, or a directory of them) as records.

Every record remembers where it came from (file and 0-based row) so that a converter can name the exact
place of a bad value.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from verl_agrae.data.rl_parquet import DatasetFormatError

#: File suffixes :func:`iter_records` reads.
SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Record:
    """One source row and its origin.

    Attributes:
        file: File the row was read from.
        row: 0-based index of the row among the file's rows (blank JSON Lines lines are not rows).
        data: The row's columns.
    """

    file: Path
    row: int
    data: dict[str, Any]

    def where(self, column: str | None = None) -> str:
        """Location string for error messages: ``file: row N[, column 'c']``."""
        loc = f"{self.file}: row {self.row}"
        return f"{loc}, column {column!r}" if column else loc


def list_source_files(path: str | os.PathLike[str]) -> list[Path]:
    """Files to read for ``path``: the file itself, or every supported file under a directory (sorted).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DatasetFormatError: If the file type is unsupported or a directory holds no supported file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DatasetFormatError(f"{p}: directory holds no {'/'.join(SUFFIXES)} file")
        return files
    if p.suffix.lower() not in SUFFIXES:
        raise DatasetFormatError(f"{p}: unsupported file type {p.suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return [p]


def _read_file(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        # In batches: DAPO-Math-17k's file holds 1.8 million rows (each problem repeated), too many to
        # hold as Python objects at once.
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DatasetFormatError(f"{path}: not a readable parquet file ({exc})") from exc
        for batch in batches:
            yield from batch.to_pylist()
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetFormatError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise DatasetFormatError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
                yield obj
    elif suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
        # The original MATH release stores one problem per .json file; other sets store a list of objects.
        items = [obj] if isinstance(obj, dict) else obj
        if not isinstance(items, list):
            raise DatasetFormatError(f"{path}: expected a JSON object or a list of objects")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DatasetFormatError(f"{path}: row {i}: expected a JSON object, got {type(item).__name__}")
            yield item
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)


def iter_file_records(file: Path) -> Iterator[Record]:
    """Yield the rows of one supported file with their origin, streaming.

    Args:
        file: A ``.parquet``/``.jsonl``/``.json``/``.csv`` file.

    Yields:
        Records in file order.
    """
    for row, data in enumerate(_read_file(file)):
        yield Record(file=file, row=row, data=data)


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Yield every row of ``path`` (a file or a directory) with its origin.

    Args:
        path: A ``.parquet``/``.jsonl``/``.json``/``.csv`` file, or a directory searched recursively.

    Yields:
        Records in file order (files sorted by path).
    """
    for file in list_source_files(path):
        yield from iter_file_records(file)


def file_columns(file: Path) -> list[str]:
    """Columns of one file: the parquet schema, or the union of the keys of every row (first-seen order)."""
    if file.suffix.lower() == ".parquet":
        try:
            return list(pq.read_schema(file).names)
        except Exception as exc:
            raise DatasetFormatError(f"{file}: not a readable parquet file ({exc})") from exc
    return list(dict.fromkeys(key for data in _read_file(file) for key in data))
