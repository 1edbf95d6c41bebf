"""The checks of a run's data inputs that the controller can run at submit: torch-free.

``check_training_inputs`` reads only what the worker would read first (paths, Parquet footers, the
names in a tokenizer directory), with the worker's own rules (``worker.data.files``,
``worker.data.tokenizer``), so a run the controller accepts fails no earlier check in the worker.
Neither this module nor what it imports loads torch or transformers (a test checks).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from shared.paths import looks_local
from worker.data.files import DataError, _has_glob, resolve_parquet_files
from worker.data.store_manifest import is_token_store, read_manifest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
"""One of these makes a directory loadable by ``AutoTokenizer.from_pretrained`` (fast or slow)."""


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

    * ``dataset``: a token store's manifest is valid (its tokenizer fingerprint and sources are the
      worker's to check: they need the tokenizer); otherwise it resolves (a file, a directory of
      ``*.parquet``, a glob), every file is readable Parquet with a string ``text`` column, and
      together they hold at least one row.
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
    if is_token_store(path):
        try:
            read_manifest(path)
        except DataError as exc:
            return [InputProblem("dataset", "invalid", str(exc))]
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
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_local(spec):
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
