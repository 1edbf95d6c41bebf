"""Reporting training progress to the controller.

The training loop talks to a ``Reporter``; without ``PYRECOVER_CONTROLLER_URL`` it gets a
``NullReporter``, so reporting is optional and can never crash or stall training.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol

from shared import envvars

EventType = Literal[
    "started", "progress", "checkpoint_committed", "stopping", "finished", "failed", "warning"
]
Action = Literal["none", "checkpoint", "stop"]


class Reporter(Protocol):
    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        """Queue an event (the reporter assigns ``seq`` and ``time``). Never blocks, never raises."""
        ...

    def requested_action(self) -> Action:
        """The newest action the controller asked for in a reply ("none" once consumed)."""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Flush what it can within ``timeout`` seconds (spooling the rest), then stop."""
        ...


class NullReporter:
    """The reporter of a standalone run: accepts everything, sends nothing."""

    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        return None

    def requested_action(self) -> Action:
        return "none"

    def close(self, timeout: float = 10.0) -> None:
        return None


def make_reporter(*, rank: int) -> Reporter:
    """The reporter for this process: only rank 0 reports, and only when a controller is configured."""
    if rank != 0 or not os.environ.get(envvars.CONTROLLER_URL):
        return NullReporter()
    from worker.report_client import HttpReporter  # the HTTP client is built by the controller work

    return HttpReporter.from_env()
