"""The signal backstop: SIGUSR1/SIGUSR2 tighten the deadline, SIGTERM asks for a stop at once.

A handler only records the signal (and when it came). Saving inside a handler would run arbitrary
code (collectives, file I/O) at an arbitrary point of the step, possibly while this rank is inside
an all-reduce that the other ranks never join. The training loop reads the flags at the next step
boundary and agrees on them across ranks, so every rank stops after the same step.

What a signal means (``backstop``, docs/architecture.md "Environment variables"):

* SIGUSR1/SIGUSR2 are the scheduler's walltime warning (SLURM ``--signal``, the local backend),
  sent ``PYRECOVER_SIGNAL_LEAD`` seconds before the time limit. The worker already knows its
  deadline, so the warning only *tightens* it: the job ends no later than ``lead`` seconds after
  the signal, and the time-aware stop saves the final checkpoint just in time. Stopping at once
  instead threw away the lead.
* SLURM may deliver ``--signal`` up to a minute early (its event resolution; measured here: 20-25 s
  early on a 1-minute limit with a 20 s lead). So on the first warning the worker re-reads its
  deadline, and when ``squeue`` answers, the scheduler itself has just restated the job's end
  (an admin's change included): the warning adds nothing and the deadline stands. Only a deadline
  the scheduler did not just confirm (``--deadline``, ``PYRECOVER_DEADLINE``, the job's start-time
  ``SLURM_JOB_END_TIME``, or a failed ``squeue``) is tightened.
* The worker stops at once when it knows no deadline or no lead (nothing to tighten: the signal
  is all it has), and on SIGTERM (preemption grace, ``scancel``, the time limit itself).
* A warning that comes while the worker still starts up (imports, model, data, the checkpoint load:
  seconds to minutes, and SLURM's early delivery can land there on short limits) would otherwise
  meet SIGUSR1's default action and kill the rank. ``catch_early_warnings``, the first thing
  ``python -m worker`` does, records it instead; the loop's ``StopSignals`` adopts it. A SIGTERM
  during start-up still ends the process: there is nothing yet to save.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from shared import envvars

if TYPE_CHECKING:
    from worker.deadline import DeadlineTracker

log = logging.getLogger("pyrecover.worker")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
WARNING_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2})
"""Signals that announce the time limit (they tighten the deadline) rather than demand a stop."""
_MAX_LEAD_S = 86_400.0
SCHEDULER_CONFIRMED = "squeue"
"""The deadline source that is the scheduler's answer at the time of asking (``worker.deadline``)."""


_early_warning: tuple[signal.Signals, float] | None = None
"""The first walltime warning that arrived before ``StopSignals`` was installed, and when."""


def _record_early(signum: int, frame: FrameType | None) -> None:
    global _early_warning
    if _early_warning is None:
        _early_warning = (signal.Signals(signum), time.time())


def catch_early_warnings() -> None:
    """Record SIGUSR1/SIGUSR2 from now on instead of dying of them (start-up, before the loop)."""
    if threading.current_thread() is threading.main_thread():
        for sig in WARNING_SIGNALS:
            signal.signal(sig, _record_early)


class StopSignals:
    """Context manager installing flag-only handlers; the previous handlers come back on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self._signals = signals
        self._previous: dict[signal.Signals, Any] = {}
        self.received: signal.Signals | None = None
        """The first signal received (what the logs name)."""
        self.warned_at: float | None = None
        """Unix time of the first SIGUSR1/SIGUSR2."""
        self.terminate = False
        """A SIGTERM came: stop at the next step boundary whatever the deadline."""

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Attribute stores only: async-signal-safe enough for CPython (the handler runs between
        # bytecodes of the main thread), and never re-entrant.
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
        if sig in WARNING_SIGNALS:
            if self.warned_at is None:
                self.warned_at = time.time()
        else:
            self.terminate = True

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: signal handlers not installed")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        early = _early_warning
        if early is not None and self.warned_at is None and early[0] in self._signals:
            log.warning("the walltime warning %s came during start-up; taking it into account", early[0].name)
            self.received = self.received or early[0]
            self.warned_at = early[1]
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


def read_signal_lead(env: Mapping[str, str]) -> float | None:
    """``PYRECOVER_SIGNAL_LEAD`` in seconds; None when unset, 0 or invalid (a warning says why).

    None is the safe answer: with no lead known, a warning signal stops the worker at once.
    """
    raw = env.get(envvars.SIGNAL_LEAD)
    if raw is None or raw.strip() == "":
        return None
    try:
        lead = float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of seconds", envvars.SIGNAL_LEAD, raw)
        return None
    if not math.isfinite(lead) or lead < 0 or lead > _MAX_LEAD_S:
        log.warning("ignoring %s=%r: not in [0, %d] seconds", envvars.SIGNAL_LEAD, raw, int(_MAX_LEAD_S))
        return None
    return lead or None


def backstop(
    *,
    deadline: float | None,
    warned_at: float | None,
    terminate: bool,
    lead: float | None,
    confirmed: bool = False,
) -> tuple[bool, float | None]:
    """The rule for the signals seen so far: (stop at once?, the deadline to plan with).

    ``deadline`` is what the deadline sources say (None: unknown); ``warned_at`` when the first
    SIGUSR1/USR2 came; ``lead`` the backend's signal lead (None: unknown); ``confirmed``: the
    scheduler restated ``deadline`` after the warning came (a fresh ``squeue`` answer).
    """
    if terminate:
        return True, deadline
    if warned_at is None:
        return False, deadline
    if deadline is None or lead is None:
        return True, deadline
    if confirmed:
        return False, deadline
    return False, min(deadline, warned_at + lead)


class Backstop:
    """``backstop`` applied at each step boundary to the loop's deadline tracker."""

    def __init__(self, lead: float | None) -> None:
        self.lead = lead
        self._refreshed = False
        self._confirmed = False

    def stop_now(self, signals: StopSignals, tracker: DeadlineTracker | None) -> bool:
        """True to stop at this boundary; otherwise a warning signal has tightened ``tracker``.

        ``tracker`` is None when the worker has no time-aware stop: then nothing would act on a
        tightened deadline, so a warning stops at once.
        """
        if not signals.requested:
            return False
        if tracker is not None and not self._refreshed and signals.warned_at is not None:
            self._refreshed = True
            tracker.refresh()  # the warning may mean the time limit changed: read it again now
            self._confirmed = tracker.source == SCHEDULER_CONFIRMED
            if self._confirmed:
                log.info(
                    "walltime warning: squeue restates the deadline %s; keeping it (SLURM signals early)",
                    tracker.deadline,
                )
        stop, deadline = backstop(
            deadline=tracker.current() if tracker is not None else None,
            warned_at=signals.warned_at,
            terminate=signals.terminate,
            lead=self.lead,
            confirmed=self._confirmed,
        )
        if not stop and deadline is not None and tracker is not None:
            tracker.tighten(deadline)
        return stop
