"""The signal backstop: SIGUSR1, SIGUSR2 and SIGTERM ask for a graceful stop.

A handler only records the signal. Saving inside a handler would run arbitrary code (collectives,
file I/O) at an arbitrary point of the step, possibly while this rank is inside an all-reduce that
the other ranks never join. The training loop reads the flag at the next step boundary and agrees
on it across ranks, so every rank stops after the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger("pyrecover.worker")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class StopSignals:
    """Context manager installing flag-only handlers; the previous handlers come back on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self._signals = signals
        self._previous: dict[signal.Signals, Any] = {}
        self.received: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only an attribute store: async-signal-safe enough for CPython, and never re-entrant.
        if self.received is None:
            self.received = signal.Signals(signum)

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: signal handlers not installed")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.received is not None:
            log.info("stop requested by %s", self.received.name)
        self.restore()
