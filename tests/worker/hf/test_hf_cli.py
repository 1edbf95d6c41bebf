"""``pyrecover export``: forwarded to the worker's parser, with its exit codes and one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.hf.cli import parse_size


def test_pyrecover_export_is_forwarded_with_help_and_exit_codes(tmp_path: Path) -> None:
    from controller.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "hf", "--help"])
    assert result.exit_code == 0, result.output
    assert "from_pretrained" in result.output and "--max-shard-size" in result.output
    assert runner.invoke(app, ["export", "onnx", "a", "b"]).exit_code == 2
    result = runner.invoke(app, ["export", "hf", str(tmp_path / "step-9"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pyrecover export hf: error:" in result.output and "not a directory" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "size"), [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("1.5G", 15 * 10**8), ("42", 42)]
)
def test_shard_sizes_are_read_in_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-1GB", "5 gigs", "", "1e9"])
def test_a_shard_size_that_is_not_a_size_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)
