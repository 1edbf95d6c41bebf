"""Building an attempt's components: every data or tokenizer problem is a one-line config error."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_launch import tiny_args

from shared.exit_codes import ExitCode
from worker.cli import main


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "pyrecover train: error:" in line or "Traceback" in line]


@pytest.mark.parametrize("rows", [0, None])
def test_a_parquet_with_a_text_column_but_no_rows_is_a_config_error(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: int | None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), data / "empty.parquet")
    if rows is None:  # a directory of two empty files
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), data / "empty2.parquet")
    spec = str(data / "empty.parquet") if rows == 0 else str(data)
    args = [*tiny_args(sample_data, tmp_path, "empty", steps=3, fmt="dcp"), "--dataset", spec]
    assert main(args) == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err
    (line,) = _error_lines(err)  # one line, no traceback
    assert line.startswith("pyrecover train: error: dataset: ") and "no rows to train on" in line
    assert str(data / "empty.parquet") in line
    assert not (tmp_path / "empty").exists(), "a failed start leaves no run directory behind"


def test_a_tokenizer_directory_without_a_tokenizer_is_a_config_error(
    sample_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tok").mkdir()
    args = [
        *tiny_args(sample_data, tmp_path, "tok", steps=3, fmt="dcp"),
        "--tokenizer-name-or-path",
        str(tmp_path / "tok"),
    ]
    assert main(args) == ExitCode.CONFIG_ERROR
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("pyrecover train: error: tokenizer_name_or_path: ")
