"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chaos_cases import ChaosTrial


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes ``chaos_trial`` is a fault case: marked ``chaos`` (``make chaos`` repeats them)."""
    for item in items:
        if "chaos_trial" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def chaos_trial(request: pytest.FixtureRequest) -> Iterator[ChaosTrial]:
    """A fault case's trial, recorded for the chaos table when the test ends (``chaos_cases``)."""
    trial = ChaosTrial()
    yield trial
    report = getattr(request.node, "rep_call", None)
    if report is not None and not report.skipped:
        trial.record(report.passed)
