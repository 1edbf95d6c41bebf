"""Which Parquet files a ``--dataset`` spec means (a file, a directory of them, or a glob), and the
checks of a run's inputs that the controller can run at submit without torch
(``check_training_inputs``)."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


# --- checks the controller can run at submit (torch-free) -----------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
"""One of these makes a directory loadable by ``AutoTokenizer.from_pretrained`` (fast or slow)."""
TOKEN_STORE_MANIFEST = "manifest.json"
"""A dataset directory holding this is a token store (``pyrecover data tokenize``): the worker checks it."""


@dataclass(frozen=True)
class InputProblem:
    """One reason a run's data inputs cannot train, found before any job starts."""

    field: str
    """``dataset`` or ``tokenizer_name_or_path``."""
    kind: Literal["missing", "invalid"]
    """``missing``: nothing at that path here (on a separate compute file system it may still exist);
    ``invalid``: it exists but cannot be used (no ``text`` column, no rows, no tokenizer files)."""
    message: str


def check_training_inputs(dataset: str, tokenizer: str) -> list[InputProblem]:
    """What the controller can check at submit, reading only file metadata (never torch, never data).

    * ``dataset``: resolves (a file, a directory of ``*.parquet``, a glob), every file is readable
      Parquet with a string ``text`` column, and together they hold at least one row. A directory
      with a token store manifest is left to the worker.
    * ``tokenizer``: a local path must be a directory holding tokenizer files (``TOKENIZER_FILES``);
      a hub name (``org/name``) is not checked (it may be in the compute nodes' cache).

    Relative paths are taken against the current directory: pass absolute ones.
    """
    problems: list[InputProblem] = []
    problems.extend(_dataset_problems(dataset))
    problems.extend(_tokenizer_problems(tokenizer))
    return problems


def _dataset_problems(spec: str) -> list[InputProblem]:
    path = Path(spec).expanduser()
    if path.is_dir() and (path / TOKEN_STORE_MANIFEST).is_file():
        return []
    exists = path.exists() or (_has_glob(spec) and bool(glob.glob(str(path), recursive=True)))
    try:
        files = resolve_parquet_files(spec)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (DataError, OSError, pa.ArrowException) as exc:
        return [InputProblem("dataset", "invalid" if exists else "missing", str(exc))]
    if rows == 0:
        named = f"{files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else "")
        return [
            InputProblem("dataset", "invalid", f"{named}: no rows to train on (the 'text' column is empty)")
        ]
    return []


def _tokenizer_problems(spec: str) -> list[InputProblem]:
    from worker.data.tokenizer import _looks_like_path as looks_like_path  # one rule for "a path"

    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_path(spec):
            return [InputProblem("tokenizer_name_or_path", "missing", f"{spec}: no such tokenizer directory")]
        return []  # a hub name: the compute nodes' cache decides
    if not path.is_dir():
        return [
            InputProblem(
                "tokenizer_name_or_path",
                "invalid",
                f"{spec}: a file; pass the directory that holds tokenizer.json",
            )
        ]
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return [
            InputProblem(
                "tokenizer_name_or_path",
                "invalid",
                f"{spec}: no tokenizer files in it (one of {', '.join(TOKENIZER_FILES)})",
            )
        ]
    return []
