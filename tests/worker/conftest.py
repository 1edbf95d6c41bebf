"""Fixtures shared by the worker tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(parquet path, tokenizer dir) of the offline sample data, built once per test session (~5 s)."""
    from worker.data.prepare import ensure_sample_data

    return ensure_sample_data(tmp_path_factory.mktemp("sample-data"))
