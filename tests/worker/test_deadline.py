"""Deadline sources (flag, env, SLURM variable, a fake squeue on PATH) and the StopPolicy on a fake clock."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from worker.deadline import (
    DeadlineTracker,
    StopPolicy,
    measure_write_bandwidth,
    parse_squeue_end_time,
    read_deadline,
)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fake_squeue(tmp_path: Path, output_file: Path) -> dict[str, str]:
    """A ``squeue`` on PATH that prints the content of ``output_file`` and logs its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "squeue"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/squeue.args\ncat {output_file}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}


def test_sources_in_design_order(tmp_path: Path) -> None:
    out = tmp_path / "squeue.out"
    out.write_text("2030-01-02T03:04:05\n")
    env = fake_squeue(tmp_path, out)
    squeue_time = datetime(2030, 1, 2, 3, 4, 5).timestamp()
    assert read_deadline(override=None, env=env) == (squeue_time, "squeue")
    assert (tmp_path / "squeue.args").read_text().split() == ["-h", "-j", "4242", "-o", "%e"]
    env["SLURM_JOB_END_TIME"] = "2000000000"
    assert read_deadline(override=None, env=env) == (2e9, "SLURM_JOB_END_TIME")
    env["PYRECOVER_DEADLINE"] = "1900000000.5"
    assert read_deadline(override=None, env=env) == (1900000000.5, "PYRECOVER_DEADLINE")
    assert read_deadline(override=123.0, env=env) == (123.0, "--deadline")
    assert read_deadline(override=None, env={}) == (None, "none")


def test_bad_values_fall_through(tmp_path: Path) -> None:
    out = tmp_path / "squeue.out"
    out.write_text("N/A\n")
    env = fake_squeue(tmp_path, out) | {"PYRECOVER_DEADLINE": "soon", "SLURM_JOB_END_TIME": "-1"}
    assert read_deadline(override=None, env=env) == (None, "none")
    assert parse_squeue_end_time("Unknown") is None
    assert parse_squeue_end_time("garbage") is None


def test_tracker_rereads_after_the_refresh_interval(tmp_path: Path) -> None:
    out = tmp_path / "squeue.out"
    out.write_text("2030-01-02T03:04:05\n")
    env = fake_squeue(tmp_path, out)
    clock = FakeClock()
    tracker = DeadlineTracker(override=None, refresh_seconds=60, env=env, clock=clock)
    first = tracker.current()
    out.write_text("2030-01-02T04:04:05\n")  # an admin extended the limit by an hour
    clock.now += 59
    assert tracker.current() == first
    clock.now += 1
    assert tracker.current() == first + 3600 and tracker.source == "squeue"


def test_policy_ignores_the_compile_step_and_stops_just_in_time() -> None:
    clock = FakeClock(0.0)
    policy = StopPolicy(margin=5.0, clock=clock, warmup_steps=1)
    policy.record_save(10.0)
    for seconds in [120.0] + [1.0] * 30:  # a slow compiled first step, then 1 s steps
        policy.begin_step()
        clock.now += seconds
        policy.end_step()
    assert policy.step_estimate() == pytest.approx(1.0)
    needed = 1.0 + 10.0 * 1.2 + 1.0 + 5.0
    assert policy.time_needed() == pytest.approx(needed)
    deadline = clock.now + needed + 0.5
    assert not policy.should_stop(deadline)
    clock.now += 0.6
    assert policy.should_stop(deadline)
    assert not policy.should_stop(None)


def test_policy_reserves_the_exit_allowance_after_the_final_save() -> None:
    clock = FakeClock(0.0)
    policy = StopPolicy(margin=5.0, exit_allowance=4.0, clock=clock, warmup_steps=0)
    policy.record_save(10.0)
    policy.record_step(1.0)
    needed = 1.0 + 10.0 * 1.2 + 1.0 + 4.0 + 5.0  # step + save estimate + exit allowance + margin
    assert policy.time_needed() == pytest.approx(needed)
    assert not policy.should_stop(clock.now + needed + 0.1)
    assert policy.should_stop(clock.now + needed - 0.1)
    with pytest.raises(ValueError, match="exit_allowance"):
        StopPolicy(margin=0.0, exit_allowance=-1.0)


def test_policy_estimate_is_a_high_quantile_not_the_max() -> None:
    policy = StopPolicy(margin=0.0, warmup_steps=0, quantile=0.9)
    for i in range(100):
        policy.record_step(10.0 if i == 50 else 1.0 + i / 1000)  # one spike
    assert 1.0 < policy.step_estimate() < 1.2


def test_save_estimate_before_any_save_uses_bandwidth(tmp_path: Path) -> None:
    policy = StopPolicy(margin=0.0, warmup_steps=0)
    policy.set_state_size(1000, write_bandwidth=100.0)
    assert policy.save_estimate() == pytest.approx(1000 / 100 * 2.0 + 1.0)
    policy.record_save(3.0)
    assert policy.save_estimate() == pytest.approx(3.0 * 1.2 + 1.0)
    assert measure_write_bandwidth(tmp_path, nbytes=1 << 20) > 0
    assert list(tmp_path.iterdir()) == []


def test_a_tightened_deadline_holds_across_refreshes_and_never_loosens() -> None:
    clock = FakeClock()
    env = {"PYRECOVER_DEADLINE": str(clock.now + 600)}
    tracker = DeadlineTracker(override=None, refresh_seconds=10, env=env, clock=clock)
    tracker.tighten(clock.now + 30)
    assert tracker.current() == clock.now + 30 and tracker.source == "signal"
    tracker.tighten(clock.now + 300)  # a later cap changes nothing
    env["PYRECOVER_DEADLINE"] = str(clock.now + 7200)  # the sources may even move the limit out
    clock.now += 11
    assert tracker.current() == clock.now - 11 + 30
    env["PYRECOVER_DEADLINE"] = str(clock.now + 5)  # but an earlier deadline from the sources wins
    assert tracker.refresh() == clock.now + 5 and tracker.source == "PYRECOVER_DEADLINE"


def test_tightening_gives_a_deadline_where_none_was_known() -> None:
    clock = FakeClock()
    tracker = DeadlineTracker(override=None, env={}, clock=clock)
    assert tracker.current() is None
    tracker.tighten(clock.now + 20)
    assert tracker.current() == clock.now + 20
