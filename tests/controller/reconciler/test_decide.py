"""The resubmission rules, one table row per case (pure functions, fake clock)."""

from __future__ import annotations

import pytest

from controller.reconciler.decide import (
    HEARTBEAT_FLOOR_S,
    NO_FINAL_CHECKPOINT,
    AttemptOutcome,
    Decision,
    Divergence,
    FinalCheckpoint,
    Reported,
    Rollback,
    Verdict,
    backoff_seconds,
    end_reason,
    failure_message,
    false_finish,
    heartbeat_timeout,
    incomplete_reason,
    is_complete,
    next_step,
    rollback_for,
)
from shared.exit_codes import ExitCode
from shared.schemas import PolicySpec
from shared.states import EndReason
from shared.states import SchedulerJobState as J
from shared.training import TrainingFields

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


# ------------------------------------------------------------------ failure classes
DIVERGENCE = Divergence(step=57, message="loss is nan", committed_step=50, window_start=400, window_end=464)


@pytest.mark.parametrize(
    ("job", "exit_code", "reported", "expected"),
    [
        (J.FAILED, ExitCode.CONFIG_ERROR, Reported(error="dataset: no such file"), EndReason.CONFIG_ERROR),
        (J.FAILED, ExitCode.CHECKPOINT_ERROR, Reported(error="x"), EndReason.INTEGRITY_ERROR),
        (J.FAILED, ExitCode.FRESH_START_REFUSED, Reported(), EndReason.RESTART_REFUSED),
        (J.FAILED, ExitCode.HUNG, Reported(), EndReason.HUNG),
        (J.FAILED, ExitCode.DIVERGED, Reported(), EndReason.DIVERGED),
        (J.FAILED, ExitCode.FAILURE, Reported(error="boom"), EndReason.FAILED),
        # mixed codes (a peer killed by srun after the trip): the worker's event decides
        (J.FAILED, 137, Reported(hung="hung in step at step 9"), EndReason.HUNG),
        (J.FAILED, 137, Reported(diverged=DIVERGENCE), EndReason.DIVERGED),
        # the controller's own cancel after a heartbeat timeout shows as CANCELLED
        (J.CANCELLED, None, Reported(hung="no report for 900 s"), EndReason.HUNG),
        # a lost node or a preemption explains the silence better than a hang does
        (J.NODE_FAIL, ExitCode.HUNG, Reported(hung="rank 1 not running"), EndReason.NODE_FAIL),
        (J.PREEMPTED, None, Reported(hung="x"), EndReason.PREEMPTED),
        (J.TIMEOUT, ExitCode.CONFIG_ERROR, Reported(), EndReason.TIMEOUT_KILLED),
    ],
)
def test_end_reason_tells_the_failure_classes_apart(
    job: J, exit_code: int | None, reported: Reported, expected: EndReason
) -> None:
    got = end_reason(job, reported, complete=False, cancel_requested=False, exit_code=exit_code)
    assert got is expected
    # a user's cancel still wins over all of them
    assert end_reason(job, reported, complete=False, cancel_requested=True, exit_code=exit_code) in (
        EndReason.CANCELLED,
        expected if job is J.COMPLETED else EndReason.CANCELLED,
    )


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        (R.CONFIG_ERROR, "fix the field the error names"),
        (R.INTEGRITY_ERROR, "restore a good one as step-<N>/"),
        (R.RESTART_REFUSED, "policy.allow_restart_from_scratch: true"),
    ],
)
def test_a_config_or_integrity_error_fails_the_run_at_once_saying_what_to_do(
    reason: EndReason, hint: str
) -> None:
    for history in (
        [o(1, reason, 0, 0, "dataset: /x does not exist")],
        [o(1, R.DEADLINE_STOP, 0, 40), o(2, reason, 40, 40, "e")],
    ):
        d = next_step(
            training_steps=100, committed_step=0, complete=False, history=history, policy=POLICY, now=NOW
        )
        assert d.verdict is Verdict.FAIL
        assert f"ended {reason.value}" in d.message and "Not retried" in d.message and hint in d.message
    # a fatal ending before the user's resume is forgiven: the user fixed it
    d = next_step(
        training_steps=100,
        committed_step=0,
        complete=False,
        history=[o(1, reason, 0, 0, "e")],
        policy=POLICY,
        now=NOW,
        resumed_after=1,
    )
    assert d.verdict is Verdict.RESUBMIT


def test_a_hang_is_retried_like_a_crash_and_counts_against_the_budget() -> None:
    d = next_step(
        training_steps=100,
        committed_step=40,
        complete=False,
        history=[o(1, R.HUNG, 0, 40)],
        policy=POLICY,
        now=NOW,
    )
    assert d.verdict is Verdict.RESUBMIT and d.not_before == NOW + 10
    stalled = [o(1, R.HUNG, 0, 0, "hung in step"), o(2, R.HUNG, 0, 0, "hung in step")]
    d = next_step(
        training_steps=100, committed_step=0, complete=False, history=stalled, policy=POLICY, now=NOW
    )
    assert d.verdict is Verdict.FAIL and "2 attempts in a row" in d.message


def _diverged_next(
    history: list[AttemptOutcome],
    policy: PolicySpec,
    committed: int = 50,
    divergence: Divergence | None = DIVERGENCE,
) -> Decision:
    return next_step(
        training_steps=100,
        committed_step=committed,
        complete=False,
        history=history,
        policy=policy,
        now=NOW,
        divergence=divergence,
    )


def test_on_divergence_fail_fails_the_run_with_the_workers_message() -> None:
    d = _diverged_next([o(1, R.DIVERGED, 0, 50, "loss is nan")], PolicySpec())
    assert d.verdict is Verdict.FAIL
    assert d.message.startswith("attempt 1 diverged: loss is nan") and "on_divergence=fail" in d.message


def test_on_divergence_rollback_resumes_past_the_window_up_to_max_rollbacks() -> None:
    policy = PolicySpec(on_divergence="rollback", max_rollbacks=2, max_failures_without_progress=1)
    d = _diverged_next([o(1, R.DIVERGED, 0, 50)], policy)
    assert d.verdict is Verdict.RESUBMIT
    assert d.rollback == Rollback(from_step=50, skip_to=464, window_start=400)
    assert "resumes from step-50 and skips the data window from sample 400 to sample 464" in d.message
    # a rollback is not a stall: the budget of 1 would have failed it
    two = [o(1, R.DIVERGED, 0, 50), o(2, R.DIVERGED, 50, 50)]
    assert _diverged_next(two, policy).verdict is Verdict.RESUBMIT
    three = [*two, o(3, R.DIVERGED, 50, 50)]
    d = _diverged_next(three, policy)
    assert (
        d.verdict is Verdict.FAIL and "diverged 3 times since the last resume (max_rollbacks=2)" in d.message
    )
    # nothing committed before the divergence: nothing to roll back to
    bare = Divergence(step=3, message="nan", committed_step=None, window_start=None, window_end=24)
    d = _diverged_next([o(1, R.DIVERGED, 0, 0)], policy, committed=0, divergence=bare)
    assert d.verdict is Verdict.FAIL and "no committed checkpoint to roll back to" in d.message
    assert "diverges from its start. What to do: lower training.learning_rate" in d.message


def test_a_divergence_before_any_checkpoint_says_rollback_cannot_help_and_what_to_do() -> None:
    bare = Divergence(
        step=1, message="weights hold NaN/inf", committed_step=None, window_start=None, window_end=4
    )
    d = _diverged_next([o(1, R.DIVERGED, 0, 0)], PolicySpec(), committed=0, divergence=bare)
    assert d.verdict is Verdict.FAIL and d.message.startswith("attempt 1 diverged: weights hold NaN/inf")
    assert "`rollback` would resume" not in d.message  # there is nothing to resume from
    assert "nothing to roll back to" in d.message and "What to do: lower training.learning_rate" in d.message
    assert "mixed_precision: true" in d.message and "/resume" in d.message


def test_rollback_for_applies_until_the_run_commits_past_the_divergence() -> None:
    assert rollback_for(None, 50) is None
    assert rollback_for(DIVERGENCE, 50) == Rollback(from_step=50, skip_to=464, window_start=400)
    # the rollback attempt crashed before committing: the next one rolls back the same way
    assert rollback_for(DIVERGENCE, 40) is not None
    assert rollback_for(DIVERGENCE, 60) is None


# ------------------------------------------------------------------ heartbeat timeout
TRAINING = TrainingFields(
    dataset="d", tokenizer_name_or_path="t", logging_frequency=5, hang_startup_seconds=900
)


def test_the_heartbeat_timeout_follows_the_step_time_and_the_saves() -> None:
    policy = PolicySpec()
    # fast steps: the floor holds, plus twice the longest save and the load
    assert heartbeat_timeout(policy, TRAINING, step_seconds=0.5, save_seconds=0) == HEARTBEAT_FLOOR_S
    assert heartbeat_timeout(policy, TRAINING, step_seconds=0.5, save_seconds=100, load_seconds=30) == (
        HEARTBEAT_FLOOR_S + 230
    )
    # slow steps: ten report intervals (logging_frequency × step)
    assert heartbeat_timeout(policy, TRAINING, step_seconds=20, save_seconds=0) == 10 * 5 * 20
    # a save 10× a step (and longer than the floor) never trips it: the save is in the slack
    step, save = 40.0, 400.0
    assert heartbeat_timeout(policy, TRAINING, step_seconds=step, save_seconds=save) > 10 * step + save
    # nothing measured yet: twice the worker's own start-up limit
    assert heartbeat_timeout(policy, TRAINING, step_seconds=None, save_seconds=0) == 1800
    # the policy's value wins
    fixed = PolicySpec(heartbeat_timeout_seconds=120)
    assert heartbeat_timeout(fixed, TRAINING, step_seconds=100, save_seconds=1000) == 120


def test_a_heartbeat_timeout_below_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout_seconds"):
        PolicySpec(heartbeat_timeout_seconds=5)
    with pytest.raises(ValueError, match="on_divergence"):
        PolicySpec(on_divergence="retry")
