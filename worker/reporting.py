"""Reporting training progress to the controller.

The training loop talks to a ``Reporter``; without ``PYRECOVER_CONTROLLER_URL`` it gets a
``NullReporter``, so reporting is optional and can never crash or stall training.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from shared import envvars
from shared.events import EventType, WorkerAction


class Reporter(Protocol):
    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        """Queue an event (the reporter assigns ``seq`` and ``time``). Never blocks, never raises."""
        ...

    def requested_action(self) -> WorkerAction:
        """The newest action the controller asked for in a reply (``NONE`` once consumed)."""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Flush what it can within ``timeout`` seconds (spooling the rest), then stop."""
        ...


class NullReporter:
    """The reporter of a standalone run: accepts everything, sends nothing."""

    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        return None

    def requested_action(self) -> WorkerAction:
        return WorkerAction.NONE

    def close(self, timeout: float = 10.0) -> None:
        return None


def make_reporter(*, rank: int) -> Reporter:
    """The reporter for this process: only rank 0 reports, and only when a controller is configured."""
    if rank != 0 or not os.environ.get(envvars.CONTROLLER_URL):
        return NullReporter()
    from worker.report_client import HttpReporter  # httpx is imported only where a controller exists

    return HttpReporter.from_env()
