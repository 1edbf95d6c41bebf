"""Stop signals only set a flag; previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from worker.signals import Backstop, StopSignals, backstop, read_signal_lead


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_sets_the_flag_and_handlers_are_restored(sig: signal.Signals) -> None:
    seen: list[int] = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(sig, previous)
    try:
        with StopSignals() as stop:
            assert not stop.requested
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.received == sig
            os.kill(os.getpid(), signal.SIGUSR2 if sig != signal.SIGUSR2 else signal.SIGUSR1)
            assert stop.received == sig  # the first signal is what is reported
        assert signal.getsignal(sig) is previous
        os.kill(os.getpid(), sig)
        assert seen == [sig]
    finally:
        signal.signal(sig, old)


def test_warnings_and_terms_are_told_apart() -> None:
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.warned_at is not None and not stop.terminate
        first = stop.warned_at
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.warned_at == first  # the first warning is the one that counts
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.terminate and stop.received == signal.SIGUSR1


@pytest.mark.parametrize(
    ("deadline", "warned_at", "terminate", "lead", "expected"),
    [
        (None, None, False, 30.0, (False, None)),  # nothing happened
        (1000.0, None, False, 30.0, (False, 1000.0)),
        (1000.0, 500.0, False, 30.0, (False, 530.0)),  # the warning tightens the deadline
        (1000.0, 990.0, False, 30.0, (False, 1000.0)),  # never later than what the sources say
        (None, 500.0, False, 30.0, (True, None)),  # no deadline known: the signal is all there is
        (1000.0, 500.0, False, None, (True, 1000.0)),  # no lead known: cannot tighten, stop at once
        (1000.0, None, True, 30.0, (True, 1000.0)),  # SIGTERM: preemption grace, scancel
        (1000.0, 500.0, True, 30.0, (True, 1000.0)),
    ],
)
def test_the_backstop_rule(
    deadline: float | None,
    warned_at: float | None,
    terminate: bool,
    lead: float | None,
    expected: tuple[bool, float | None],
) -> None:
    assert backstop(deadline=deadline, warned_at=warned_at, terminate=terminate, lead=lead) == expected


@pytest.mark.parametrize(
    ("value", "lead"),
    [(None, None), ("", None), ("0", None), ("20", 20.0), ("2.5", 2.5), ("soon", None), ("nan", None),
     ("inf", None), ("-5", None), ("1e9", None)],
)  # fmt: skip
def test_the_signal_lead_from_the_environment(value: str | None, lead: float | None) -> None:
    env = {} if value is None else {"PYRECOVER_SIGNAL_LEAD": value}
    assert read_signal_lead(env) == lead


class _Tracker:
    """The two methods of DeadlineTracker the backstop uses, with a scripted deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.refreshes = 0

    def refresh(self) -> float | None:
        self.refreshes += 1
        return self.deadline

    def current(self) -> float | None:
        return self.deadline

    def tighten(self, cap: float) -> None:
        self.deadline = cap if self.deadline is None else min(self.deadline, cap)


def test_backstop_tightens_the_tracker_once_and_rereads_the_sources_once() -> None:
    stop = StopSignals()
    tracker = _Tracker(deadline=10_000.0)
    backstop_ = Backstop(lead=20.0)
    assert not backstop_.stop_now(stop, tracker)  # type: ignore[arg-type]
    assert tracker.refreshes == 0
    stop.received, stop.warned_at = signal.SIGUSR1, 5_000.0
    assert not backstop_.stop_now(stop, tracker)  # type: ignore[arg-type]
    assert tracker.deadline == 5_020.0 and tracker.refreshes == 1
    assert not backstop_.stop_now(stop, tracker)  # type: ignore[arg-type]
    assert tracker.refreshes == 1
    assert backstop_.stop_now(stop, None)  # no time-aware stop to hand the deadline to: stop now
    stop.terminate = True
    assert backstop_.stop_now(stop, tracker)  # type: ignore[arg-type]
