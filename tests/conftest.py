"""Suite-wide test configuration.

Integration tests skip on a laptop without SLURM, PostgreSQL or Chromium. In CI
``PYRECOVER_STRICT_INTEGRATION=1`` turns every skip into a failure, so a missing component
can never make the suite green by silently not testing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

STRICT = os.environ.get("PYRECOVER_STRICT_INTEGRATION") == "1"
# Most tests' runs name datasets that exist nowhere (the fake schedulers read none): the submit-time
# input check (controller/services/input_checks.py) is off for them and tested where it is the subject,
# with the setting passed explicitly. Set before any Settings is built, and inherited by the
# controller processes tests start.
os.environ.setdefault("PYRECOVER_INPUTS_VISIBLE", "[]")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        # The test's own outcome, for fixtures that act on it when they tear down (chaos_trial).
        item.rep_call = report  # type: ignore[attr-defined]
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under PYRECOVER_STRICT_INTEGRATION=1 (CI must test this): {reason}"
