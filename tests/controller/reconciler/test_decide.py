"""The resubmission rules, one table row per case (pure functions, fake clock)."""

from __future__ import annotations

import pytest

from controller.reconciler.decide import (
    NO_FINAL_CHECKPOINT,
    AttemptOutcome,
    FinalCheckpoint,
    Reported,
    Verdict,
    backoff_seconds,
    end_reason,
    failure_message,
    false_finish,
    incomplete_reason,
    is_complete,
    next_step,
)
from shared.schemas import PolicySpec
from shared.states import EndReason
from shared.states import SchedulerJobState as J

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("job", "reported", "complete", "cancel", "expected"),
    [
        # a worker's "finished" the controller cannot confirm is a failure, never the end
        (J.COMPLETED, Reported(finished=True), False, False, EndReason.FAILED),
        (J.COMPLETED, Reported(finished=True), True, False, EndReason.FINISHED),
        (J.COMPLETED, Reported(), True, False, EndReason.FINISHED),
        (J.TIMEOUT, Reported(), True, False, EndReason.FINISHED),  # finished just as it was killed
        (J.COMPLETED, Reported(stopping_reason="deadline"), False, False, EndReason.DEADLINE_STOP),
        (J.COMPLETED, Reported(), False, False, EndReason.DEADLINE_STOP),  # reports lost: still a clean stop
        (J.COMPLETED, Reported(stopping_reason="signal"), False, False, EndReason.SIGNAL_STOP),
        (J.COMPLETED, Reported(stopping_reason="controller_request"), False, False, EndReason.SIGNAL_STOP),
        (J.COMPLETED, Reported(error="boom"), False, False, EndReason.FAILED),
        (J.TIMEOUT, Reported(stopping_reason="deadline"), False, False, EndReason.TIMEOUT_KILLED),
        (J.PREEMPTED, Reported(), False, False, EndReason.PREEMPTED),
        (J.NODE_FAIL, Reported(), False, False, EndReason.NODE_FAIL),
        (J.BOOT_FAIL, Reported(), False, False, EndReason.NODE_FAIL),
        (J.FAILED, Reported(error="x"), False, False, EndReason.FAILED),
        (J.OUT_OF_MEMORY, Reported(), False, False, EndReason.FAILED),
        (J.CANCELLED, Reported(), False, False, EndReason.CANCELLED),
        (J.FAILED, Reported(), False, True, EndReason.CANCELLED),  # killed by our own cancel
        (J.COMPLETED, Reported(finished=True), True, True, EndReason.FINISHED),  # finished before the cancel
        (J.LOST, Reported(), False, False, EndReason.LOST),
    ],
)
def test_end_reason(job: J, reported: Reported, complete: bool, cancel: bool, expected: EndReason) -> None:
    assert end_reason(job, reported, complete=complete, cancel_requested=cancel) is expected


@pytest.mark.parametrize(
    ("final", "complete", "why"),
    [
        (NO_FINAL_CHECKPOINT, False, "the controller holds no committed checkpoint at step 100"),
        (FinalCheckpoint(recorded=True, inside=True), True, ""),  # the file system is not visible
        (FinalCheckpoint(recorded=True, inside=True, verified=True), True, ""),
        (
            FinalCheckpoint(recorded=True, inside=True, verified=False, problems=("a.distcp: missing",)),
            False,
            "the checkpoint of step 100 failed verification: a.distcp: missing",
        ),
        # recorded at a path outside the run's directory (a row older than the path check)
        (
            FinalCheckpoint(recorded=True, inside=False, verified=True),
            False,
            "the checkpoint of step 100 is recorded outside the run's checkpoint directory",
        ),
    ],
)
def test_a_run_is_complete_only_on_a_checkpoint_the_controller_holds(
    final: FinalCheckpoint, complete: bool, why: str
) -> None:
    assert is_complete(final) is complete
    assert incomplete_reason(final, 100) == why
    assert false_finish(Reported(finished=True), complete=is_complete(final)) is not complete
    assert not false_finish(Reported(), complete=False)
    message = failure_message(J.COMPLETED, 0, None, Reported(finished=True), unconfirmed=why)
    assert message == (f"the worker reported finished, but {why}" if why else "job completed")


def test_failure_message_prefers_the_workers_last_line() -> None:
    tb = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    assert (
        failure_message(J.FAILED, 1, "exit code 1", Reported(error=tb)) == "RuntimeError: CUDA out of memory"
    )
    assert failure_message(J.FAILED, 3, "exit code 3", Reported()) == "job failed, exit code 3"
    assert failure_message(J.LOST, None, None, Reported()) == "job lost"
    assert (
        failure_message(J.TIMEOUT, 0, "killed at the time limit", Reported())
        == "job timeout, killed at the time limit"
    )


def o(n: int, reason: EndReason, start: int, end: int, error: str | None = None) -> AttemptOutcome:
    return AttemptOutcome(number=n, end_reason=reason, step_at_start=start, step_at_end=end, error=error)


POLICY = PolicySpec(max_attempts=5, max_failures_without_progress=2, backoff_seconds=10)
R = EndReason


@pytest.mark.parametrize(
    ("committed", "history", "verdict", "not_before", "message"),
    [
        # all steps committed (and held) → COMPLETED, whatever the last ending
        (100, [o(1, R.DEADLINE_STOP, 0, 100)], Verdict.COMPLETE, None, "trained all 100"),
        # an ending called "finished" no longer completes a run by itself
        (40, [o(1, R.FINISHED, 0, 40)], Verdict.RESUBMIT, None, ""),
        # a walltime stop with progress → resubmit at once
        (40, [o(1, R.DEADLINE_STOP, 0, 40)], Verdict.RESUBMIT, None, ""),
        (40, [o(1, R.TIMEOUT_KILLED, 0, 40)], Verdict.RESUBMIT, None, ""),
        (40, [o(1, R.PREEMPTED, 0, 40)], Verdict.RESUBMIT, None, ""),
        # a failure → backoff 10 s, then 20 s for the second one in a row
        (40, [o(1, R.FAILED, 0, 40, "boom")], Verdict.RESUBMIT, NOW + 10, ""),
        (50, [o(1, R.FAILED, 0, 40), o(2, R.LOST, 40, 50)], Verdict.RESUBMIT, NOW + 20, ""),
        # failures that made progress do not exhaust the budget
        (
            60,
            [o(1, R.FAILED, 0, 20), o(2, R.FAILED, 20, 40), o(3, R.FAILED, 40, 60)],
            Verdict.RESUBMIT,
            NOW + 40,
            "",
        ),
        # two attempts in a row without a new checkpoint → FAILED with the last error
        (
            40,
            [o(1, R.DEADLINE_STOP, 0, 40), o(2, R.FAILED, 40, 40, "x"), o(3, R.FAILED, 40, 40, "OOM")],
            Verdict.FAIL,
            None,
            "2 attempts in a row committed no new checkpoint (max_failures_without_progress=2); "
            "last error: OOM",
        ),
        # clean stops without progress count too (the walltime is too short to ever save)
        (
            0,
            [o(1, R.DEADLINE_STOP, 0, 0), o(2, R.DEADLINE_STOP, 0, 0)],
            Verdict.FAIL,
            None,
            "2 attempts in a row",
        ),
        # total cap
        (
            50,
            [o(i, R.DEADLINE_STOP, 10 * (i - 1), 10 * i) for i in range(1, 6)],
            Verdict.FAIL,
            None,
            "reached max_attempts=5 at step 50/100",
        ),
    ],
)
def test_next_step(
    committed: int, history: list[AttemptOutcome], verdict: Verdict, not_before: float | None, message: str
) -> None:
    d = next_step(
        training_steps=100,
        committed_step=committed,
        complete=committed >= 100,
        history=history,
        policy=POLICY,
        now=NOW,
    )
    assert d.verdict is verdict
    assert d.not_before == not_before
    assert d.message.startswith(message)


def test_backoff_is_capped_and_can_be_disabled() -> None:
    many = [o(i, R.FAILED, 0, i) for i in range(1, 30)]
    assert backoff_seconds(many, POLICY) == 3600.0
    assert backoff_seconds(many, PolicySpec(backoff_seconds=0)) == 0.0
    assert backoff_seconds([o(1, R.FAILED, 0, 0), o(2, R.DEADLINE_STOP, 0, 5)], POLICY) == 0.0


def test_the_budget_counts_only_attempts_since_the_user_resumed_the_run() -> None:
    history = [o(1, R.FAILED, 0, 0), o(2, R.FAILED, 0, 0)]  # would exhaust a budget of 2 ...
    d = next_step(
        training_steps=100, committed_step=0, complete=False, history=history, policy=POLICY, now=NOW
    )
    assert d.verdict is Verdict.FAIL
    # ... but the run was resumed after attempt 1: one stalled attempt so far, one failure to back off
    d = next_step(
        training_steps=100,
        committed_step=0,
        complete=False,
        history=history,
        policy=POLICY,
        now=NOW,
        resumed_after=1,
    )
    assert d.verdict is Verdict.RESUBMIT and d.not_before == NOW + 10
    # max_attempts too: five attempts, resumed after the fourth
    many = [o(i, R.DEADLINE_STOP, 10 * (i - 1), 10 * i) for i in range(1, 6)]
    d = next_step(
        training_steps=100,
        committed_step=50,
        complete=False,
        history=many,
        policy=POLICY,
        now=NOW,
        resumed_after=4,
    )
    assert d.verdict is Verdict.RESUBMIT


def test_a_cancel_ends_the_run_whatever_else_holds() -> None:
    for committed, history in ((100, [o(1, R.FINISHED, 0, 100)]), (0, [o(1, R.FAILED, 0, 0)] * 3), (0, [])):
        d = next_step(
            training_steps=100,
            committed_step=committed,
            complete=committed >= 100,
            history=history,
            policy=POLICY,
            now=NOW,
            cancel_requested=True,
        )
        assert d.verdict is Verdict.CANCEL and d.message == "cancelled by the user"
