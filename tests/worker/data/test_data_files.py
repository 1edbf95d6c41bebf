"""worker.data.files: a file, a directory or a glob; clear errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_helpers import write_texts

from worker.data import DataError, resolve_parquet_files


def test_file_directory_and_glob(tmp_path: Path) -> None:
    b = write_texts(tmp_path / "b.parquet", ["x"])
    a = write_texts(tmp_path / "a.parquet", ["y"])
    (tmp_path / "notes.txt").write_text("not parquet")
    sub = tmp_path / "sub"
    sub.mkdir()
    c = write_texts(sub / "c.parquet", ["z"])
    assert resolve_parquet_files(str(a)) == [a]
    assert resolve_parquet_files(tmp_path) == [a, b]  # sorted, not recursive, only *.parquet
    assert resolve_parquet_files(f"{tmp_path}/*.parquet") == [a, b]
    assert resolve_parquet_files(f"{tmp_path}/**/*.parquet") == [a, b, c]


def test_missing_things_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        resolve_parquet_files(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="no file matches"):
        resolve_parquet_files(f"{tmp_path}/*.parquet")
    with pytest.raises(DataError, match=r"contains no \*\.parquet"):
        resolve_parquet_files(tmp_path)
    assert issubclass(DataError, ValueError)


def test_missing_or_wrong_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["hello"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no 'text' column \\(columns: content\\)"):
        resolve_parquet_files(tmp_path / "x.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "y.parquet")
    with pytest.raises(DataError, match="expected a string type"):
        resolve_parquet_files(tmp_path / "y.parquet")
    (tmp_path / "z.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        resolve_parquet_files(tmp_path / "z.parquet")
