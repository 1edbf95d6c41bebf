"""worker.data.files: a file, a directory or a glob; clear errors for what cannot be used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_helpers import write_texts

from worker.data import DataError, resolve_parquet_files
from worker.data.files import InputProblem, check_training_inputs


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


def _kinds(problems: list[InputProblem]) -> list[tuple[str, str]]:
    return [(p.field, p.kind) for p in problems]


def test_submit_time_checks_name_the_field_and_tell_missing_from_unusable(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    good = write_texts(tmp_path / "good.parquet", ["some text"])
    assert check_training_inputs(str(good), str(tok)) == []
    assert check_training_inputs(f"{tmp_path}/*.parquet", "meta-llama/Llama-3.1-8B") == []  # a hub name

    (tmp_path / "empty").mkdir()
    empty = write_texts(tmp_path / "empty" / "e.parquet", [])
    (problem,) = check_training_inputs(str(empty), str(tok))
    assert (problem.field, problem.kind) == ("dataset", "invalid") and "no rows" in problem.message
    (tmp_path / "notes.txt").write_text("not parquet")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
    cases = {
        str(tmp_path / "nope.parquet"): ("dataset", "missing"),
        f"{tmp_path}/nothing-*.parquet": ("dataset", "missing"),
        str(tmp_path / "notes.txt"): ("dataset", "invalid"),
        str(tmp_path / "nocol.parquet"): ("dataset", "invalid"),
        str(tmp_path / "empty"): ("dataset", "invalid"),
    }
    for spec, expected in cases.items():
        assert _kinds(check_training_inputs(spec, str(tok))) == [expected], spec
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{}")
    assert check_training_inputs(str(tmp_path / "store"), str(tok)) == []  # the worker checks stores

    bare = tmp_path / "bare"
    bare.mkdir()
    for spec, expected in {
        str(tmp_path / "no-tokenizer"): ("tokenizer_name_or_path", "missing"),
        str(tok / "tokenizer.json"): ("tokenizer_name_or_path", "invalid"),
        str(bare): ("tokenizer_name_or_path", "invalid"),
    }.items():
        (problem,) = check_training_inputs(str(good), spec)
        assert (problem.field, problem.kind) == expected and spec in problem.message


def test_the_submit_time_checks_never_import_torch(sample_data: tuple[Path, Path]) -> None:
    parquet, tokenizer = sample_data
    code = (
        "import sys; from worker.data.files import check_training_inputs; "
        f"assert check_training_inputs({str(parquet)!r}, {str(tokenizer)!r}) == []; "
        f"check_training_inputs({str(parquet.parent / 'nope')!r}, 'org/name'); "
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
