"""Fixtures of the fault-injection suite (``tests/fault``; ``make chaos`` runs it with more trials)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The real-controller harness of the end-to-end tests is reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(parquet, tokenizer dir) of the offline sample data, built once per session."""
    from worker.data.prepare import ensure_sample_data

    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("fault-data"))
    return Path(dataset).resolve(), Path(tokenizer).resolve()


@pytest.fixture(scope="session")
def zygote() -> Iterator[object]:
    from chaos import Zygote

    launcher = Zygote()
    yield launcher
    launcher.close()
