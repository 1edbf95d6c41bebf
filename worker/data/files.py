"""Which Parquet files a ``--dataset`` spec means: a file, a directory of them, or a glob."""

from __future__ import annotations

import glob
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEXT_COLUMN = "text"


class DataError(ValueError):
    """The dataset or tokenizer cannot be used; the message says which and why."""


def _has_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def check_parquet_file(path: Path) -> None:
    """Raise DataError unless ``path`` is a readable Parquet file with a string ``text`` column."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    if TEXT_COLUMN not in schema.names:
        raise DataError(f"{path}: no {TEXT_COLUMN!r} column (columns: {', '.join(schema.names) or 'none'})")
    col_type = schema.field(TEXT_COLUMN).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise DataError(f"{path}: column {TEXT_COLUMN!r} has type {col_type}, expected a string type")


def resolve_parquet_files(spec: str | Path) -> list[Path]:
    """The Parquet files ``spec`` names, in a stable (sorted) order, each checked for a ``text`` column.

    ``spec`` is a file, a directory (its ``*.parquet`` files, not recursive) or a glob pattern
    (``**`` recurses). Raises DataError when nothing matches, a file is missing or unreadable, or
    a file has no ``text`` column.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"{text}: directory contains no *.parquet files")
    elif _has_glob(text):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{text}: no file matches this pattern")
    else:
        raise DataError(f"{text}: no such file or directory")
    for f in files:
        check_parquet_file(f)
    return files
