"""Goodput arithmetic (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.services.goodput import AttemptGoodput, attempt_goodput, run_goodput

T = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def test_an_attempt_that_committed_and_stopped() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=at(30),
        end=at(330),
        training_started=at(45),
        last_commit=at(300),
        startup_s=10.0,
        checkpoint_load_s=5.0,
        checkpoint_stall_s=3.0,
        now=at(1000),
    )
    assert g == AttemptGoodput(
        allocated_s=300.0,
        queue_wait_s=30.0,
        startup_s=10.0,
        checkpoint_load_s=5.0,
        productive_committed_s=255.0,
        lost_work_s=30.0,
        checkpoint_stall_s=3.0,
    )


def test_a_live_attempt_counts_up_to_now_and_nothing_committed_is_all_lost() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=at(10),
        end=None,
        training_started=at(20),
        last_commit=None,
        startup_s=0.0,
        checkpoint_load_s=0.0,
        checkpoint_stall_s=0.0,
        now=at(110),
    )
    assert g.allocated_s == 100.0 and g.productive_committed_s == 0.0 and g.lost_work_s == 90.0


def test_never_started_allocates_nothing() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=None,
        end=None,
        training_started=None,
        last_commit=None,
        startup_s=0.0,
        checkpoint_load_s=0.0,
        checkpoint_stall_s=0.0,
        now=at(50),
    )
    assert g.allocated_s == 0.0 and g.queue_wait_s == 0.0 and g.lost_work_s == 0.0


def test_run_goodput_is_productive_over_allocated() -> None:
    a = AttemptGoodput(allocated_s=300.0, productive_committed_s=240.0, lost_work_s=20.0)
    b = AttemptGoodput(allocated_s=100.0, productive_committed_s=0.0, lost_work_s=100.0)
    total = run_goodput([a, b])
    assert total.allocated_s == 400.0 and total.lost_work_s == 120.0
    assert total.goodput == pytest.approx(0.6)
    assert run_goodput([]).goodput is None
