"""Signals only set flags; a walltime warning tightens the deadline, a TERM (or no lead) stops at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from train_launch import run_worker, tiny_args, wait_for_step

from worker import signals as signals_module
from worker.loss_log import read_losses
from worker.signals import Backstop, StopSignals, backstop, catch_early_warnings, read_signal_lead


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


def test_a_deadline_the_scheduler_restated_after_the_warning_stands() -> None:
    # SLURM may send --signal up to a minute early; a fresh squeue answer is the real end.
    assert backstop(deadline=1000.0, warned_at=500.0, terminate=False, lead=30.0, confirmed=True) == (
        False,
        1000.0,
    )
    assert backstop(deadline=None, warned_at=500.0, terminate=False, lead=30.0, confirmed=True)[0]
    assert backstop(deadline=1000.0, warned_at=500.0, terminate=True, lead=30.0, confirmed=True)[0]


class _Tracker:
    """The methods of DeadlineTracker the backstop uses, with a scripted deadline and source."""

    def __init__(self, deadline: float | None, source: str = "--deadline") -> None:
        self.deadline = deadline
        self.source = source
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

    squeue = _Tracker(deadline=10_000.0, source="squeue")
    warned = StopSignals()
    warned.received, warned.warned_at = signal.SIGUSR1, 5_000.0
    assert not Backstop(lead=20.0).stop_now(warned, squeue)  # type: ignore[arg-type]
    assert squeue.deadline == 10_000.0 and squeue.refreshes == 1


STOP_RE = re.compile(r"stopped at step (\d+) \((\w+)\)")


def _warn_at_step(
    csv: Path, step: int, seen: dict[str, float]
) -> Callable[[list[subprocess.Popen[bytes]]], None]:
    def act(procs: list[subprocess.Popen[bytes]]) -> None:
        assert wait_for_step(csv, step, procs)
        seen["step"] = float(max(read_losses(csv)))
        seen["at"] = time.monotonic()
        procs[0].send_signal(signal.SIGUSR1)

    return act


@pytest.mark.slow  # two single-rank workers, ~40 s on the development machine
def test_a_walltime_warning_tightens_the_deadline_instead_of_stopping_at_once(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    def args(name: str) -> list[str]:
        return [
            *tiny_args(sample_data, tmp_path, name, steps=5000, fmt="dcp"),
            *("--checkpoint-frequency", "-1", "--deadline", str(time.time() + 3600)),
            *("--deadline-margin", "0", "--exit-allowance", "1"),
        ]

    seen: dict[str, float] = {}
    lead = 15
    warned = run_worker(
        args("warned"),
        world_size=1,
        env={"PYRECOVER_SIGNAL_LEAD": str(lead)},
        while_running=_warn_at_step(tmp_path / "warned" / "loss.csv", 5, seen),
        timestamps=True,
    )
    assert warned.ok, warned.explain()
    m = STOP_RE.search(warned.stderr[0])
    assert m and m.group(2) == "deadline", warned.stderr[0][-2000:]
    assert "deadline tightened by the walltime signal" in warned.stderr[0]
    assert int(m.group(1)) > seen["step"] + 1, "it should have kept training into the signal's lead"
    print(
        f"USR1 with a {lead} s lead: exited {warned.exited[0] - seen['at']:.1f} s later, at step {m.group(1)}"
    )

    # Without a known lead the same signal is all the worker has: it stops at the next boundary.
    blind = run_worker(
        args("blind"), world_size=1, while_running=_warn_at_step(tmp_path / "blind" / "loss.csv", 5, seen)
    )
    assert blind.ok, blind.explain()
    m = STOP_RE.search(blind.stderr[0])
    assert m and m.group(2) == "signal" and int(m.group(1)) <= seen["step"] + 2


def test_a_warning_before_the_loop_is_recorded_and_adopted_by_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signals_module, "_early_warning", None)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        catch_early_warnings()
        sent = time.time()
        os.kill(os.getpid(), signal.SIGUSR1)  # would end this process with SIGUSR1's default action
        os.kill(os.getpid(), signal.SIGUSR2)  # only the first one counts
        with StopSignals() as stop:
            assert stop.received is signal.SIGUSR1 and not stop.terminate
            assert stop.warned_at is not None and sent - 1 <= stop.warned_at <= time.time()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow  # one tiny worker, ~15 s
def test_a_walltime_warning_during_start_up_does_not_kill_the_worker(
    sample_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """SLURM may deliver ``--signal`` a minute early: on a short limit it can land while the worker
    still imports torch. It must tighten the deadline like any warning, not kill the rank (exit 138
    ended a SLURM attempt FAILED in CI)."""
    lead = 12

    def warn_at_once(procs: list[subprocess.Popen[bytes]]) -> None:
        time.sleep(0.3)  # the interpreter has started; torch is still importing
        procs[0].send_signal(signal.SIGUSR1)

    result = run_worker(
        [
            *tiny_args(sample_data, tmp_path, "early", steps=5000, fmt="dcp"),
            *("--checkpoint-frequency", "-1", "--deadline", str(time.time() + 3600)),
            *("--deadline-margin", "0", "--exit-allowance", "1"),
        ],
        world_size=1,
        env={"PYRECOVER_SIGNAL_LEAD": str(lead)},
        while_running=warn_at_once,
    )
    assert result.ok, result.explain()
    m = STOP_RE.search(result.stderr[0])
    assert m and m.group(2) == "deadline", result.stderr[0][-2000:]
    assert (
        "came during start-up" in result.stderr[0]
        and "deadline tightened by the walltime signal" in result.stderr[0]
    )
