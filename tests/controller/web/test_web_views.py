"""Pure rules behind the pages: actions per state, restarts by cause, ETA, the attempt timeline."""

from __future__ import annotations

import pytest

from controller.web.views import AttemptTimes, allowed_actions, eta_seconds, restarts_by_cause, timeline


def test_allowed_actions_follow_the_state() -> None:
    assert allowed_actions("RUNNING") == ("checkpoint", "stop", "cancel")
    assert allowed_actions("QUEUED") == ("cancel",)
    assert allowed_actions("PENDING") == ("cancel",)
    assert allowed_actions("FAILED") == ("resume",)
    assert allowed_actions("CANCELLED") == ("resume",)
    assert allowed_actions("COMPLETED") == ()
    with pytest.raises(ValueError):
        allowed_actions("BOGUS")


def test_restarts_by_cause_counts_every_end_but_a_finish_or_a_cancel() -> None:
    reasons = ["deadline_stop", "preempted", "deadline_stop", None, "finished", "node_fail", "deadline_stop"]
    reasons += ["cancelled"]  # the user ended the run: nothing was restarted
    assert restarts_by_cause(reasons) == [("deadline_stop", 3), ("node_fail", 1), ("preempted", 1)]
    assert restarts_by_cause([]) == []


def test_eta_only_for_running_runs_with_a_known_pace() -> None:
    assert eta_seconds(100, 1100, 0.5, "RUNNING") == 500
    assert eta_seconds(1200, 1100, 0.5, "RUNNING") == 0
    assert eta_seconds(100, 1100, None, "RUNNING") is None
    assert eta_seconds(100, 1100, 0.5, "QUEUED") is None


def _attempt(
    n: int, sub: float | None, start: float | None, stop: float | None, end: float | None
) -> AttemptTimes:
    return AttemptTimes(
        number=n,
        backend="slurm",
        external_id=str(100 + n),
        state="ENDED" if end else "RUNNING",
        end_reason="deadline_stop" if end else None,
        submitted_at=sub,
        started_at=start,
        stopping_at=stop,
        ended_at=end,
        step_at_start=None,
        step_at_end=None,
    )


def test_timeline_puts_attempts_on_one_axis() -> None:
    rows = timeline(
        [_attempt(1, 0, 10, 80, 90), _attempt(2, 85, 95, None, None)],
        now=100,
    )
    first, second = rows
    assert (first.queue_seconds, first.run_seconds, first.save_seconds) == (10, 70, 10)
    kinds = [(s.kind, s.left, s.width) for s in first.segments]
    assert kinds == [("queue", 0.0, 10.0), ("run", 10.0, 70.0), ("save", 80.0, 10.0)]
    # the successor was pre-queued during the final save: its queue wait overlaps it
    assert [(s.kind, s.left, s.width) for s in second.segments] == [("queue", 85.0, 10.0), ("run", 95.0, 5.0)]
    assert second.save_seconds is None and second.run_seconds == 5


def test_timeline_handles_unsubmitted_and_unstarted_attempts() -> None:
    rows = timeline([_attempt(1, None, None, None, None)], now=5)
    assert rows[0].segments == [] and rows[0].queue_seconds is None
    rows = timeline([_attempt(1, 0, None, None, None)], now=40)
    assert [(s.kind, s.width) for s in rows[0].segments] == [("queue", 100.0)]
    assert rows[0].run_seconds is None


def test_a_run_being_cancelled_offers_no_more_actions() -> None:
    from dataclasses import replace

    from controller.web.views import RunDetail

    run = RunDetail(
        id=1,
        name="r",
        state="RUNNING",
        step=0,
        total_steps=10,
        eta_seconds=None,
        attempts=1,
        restarts=[],
        goodput=None,
        updated_at=None,
        last_loss=None,
        latest_checkpoint_step=None,
        message=None,
        config=[],
        timeline=[],
        checkpoints=[],
        events=[],
    )
    assert run.allowed_actions == ("checkpoint", "stop", "cancel")
    assert replace(run, cancel_requested=True).allowed_actions == ()
