"""Where resubmission is decided: every rule, as pure functions of explicit facts.

No DB, no scheduler, no clock: the reconciler (``controller.reconciler.ending``) gathers the facts
(the run's committed progress, its policy, the attempt chain, where the user resumed it, what the
worker reported, what the scheduler says, the time) and asks these functions

1. whether the run has trained all its steps (``is_complete``: a committed checkpoint at
   ``training_steps`` the controller holds, verified where it can see it — never the worker's word);
2. why the attempt ended (``end_reason``: the worker's events, its exit code's failure class,
   the scheduler's state), and which endings carry an error (``ERROR_REASONS``,
   ``failure_message``, ``remedy``, ``remedy_for``);
3. what happens to the run next (``next_step``): CANCEL, COMPLETE, FAIL or RESUBMIT, with the
   failure budget (``attempts_without_progress``) and the backoff (``backoff_seconds``) read off
   the attempt chain since the user last resumed the run — no counter is kept anywhere else; a
   config or integrity error fails the run at once, a divergence follows ``policy.on_divergence``
   (``rollback_for``: where the next attempt resumes and which data it skips);
4. when a RUNNING attempt that stopped reporting counts as hung (``heartbeat_timeout``).

Keeping them pure makes every rule a row in a table test (tests/controller/reconciler/test_decide.py).
See docs/architecture.md, "Where is resubmission decided".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.events import StopReason
from shared.exit_codes import END_REASON_OF_EXIT
from shared.schemas import OnDivergence, PolicySpec
from shared.states import FATAL_END_REASONS, EndReason, SchedulerJobState
from shared.training import TrainingFields

ERROR_REASONS = frozenset(
    {
        EndReason.FAILED,
        EndReason.LOST,
        EndReason.NODE_FAIL,
        EndReason.TIMEOUT_KILLED,
        EndReason.HUNG,
        EndReason.DIVERGED,
        *FATAL_END_REASONS,
    }
)
"""Endings whose attempt record keeps an error message (``failure_message``)."""
# Endings that say something is wrong with the job itself; the next try waits (exponential backoff).
# A walltime stop, a timeout kill, a preemption or a node failure is the cluster's doing: retry at once.
# A hang is retried like a crash: the backoff also gives a cancelled job time to leave its nodes.
BACKOFF_REASONS = frozenset({EndReason.FAILED, EndReason.LOST, EndReason.CANCELLED, EndReason.HUNG})
# The scheduler's word beats the worker's for these: a lost node or a preemption explains a hang.
_SCHEDULER_DECIDES = frozenset(
    {
        SchedulerJobState.TIMEOUT,
        SchedulerJobState.PREEMPTED,
        SchedulerJobState.NODE_FAIL,
        SchedulerJobState.BOOT_FAIL,
    }
)


@dataclass(frozen=True, kw_only=True)
class Divergence:
    """What a ``diverged`` event said: where the attempt went wrong and the data window before it."""

    step: int
    message: str
    committed_step: int | None
    """The newest checkpoint the attempt knew committed (None: none, nothing to roll back to)."""
    window_start: int | None
    """``chunks_consumed`` of that checkpoint's data cursor (None: not reported)."""
    window_end: int
    """``chunks_consumed`` after the diverged step's batch: what ``--data-skip-to`` takes."""


@dataclass(frozen=True, kw_only=True)
class Rollback:
    """How the next attempt resumes after a divergence (``--resume-from-checkpoint step-<N>
    --data-skip-to <chunks>``)."""

    from_step: int
    skip_to: int
    window_start: int | None = None

    def describe(self) -> str:
        start = f"{self.window_start}" if self.window_start is not None else f"step-{self.from_step}'s cursor"
        return (
            f"resumes from step-{self.from_step} and skips the data window from sample {start} "
            f"to sample {self.skip_to}"
        )


@dataclass(frozen=True, kw_only=True)
class Reported:
    """What the worker reported during the attempt (from the stored worker events)."""

    finished: bool = False
    stopping_reason: StopReason | None = None
    """The ``reason`` of the attempt's ``stopping`` event, if it sent one."""
    error: str | None = None
    """The ``error`` of a ``failed`` event."""
    hung: str | None = None
    """Why the attempt counts as hung: the worker's ``hung`` event, or the controller's heartbeat
    timeout (``heartbeat_timeout``), in one line."""
    diverged: Divergence | None = None
    """The attempt's ``diverged`` event."""


@dataclass(frozen=True, kw_only=True)
class AttemptOutcome:
    """One ended attempt, as far as the failure budget is concerned."""

    number: int
    end_reason: EndReason
    step_at_start: int
    step_at_end: int
    """The run's newest committed checkpoint step when the attempt ended."""
    error: str | None = None
    started: bool = True
    """The scheduler started its job (a pre-queued successor cancelled while pending never did)."""

    @property
    def made_progress(self) -> bool:
        return self.step_at_end > self.step_at_start

    @property
    def never_ran(self) -> bool:
        """Cancelled before its job started: no try at all, so neither progress nor a failure."""
        return self.end_reason is EndReason.CANCELLED and not self.started

    @classmethod
    def of(cls, attempt: Any) -> AttemptOutcome:
        """From an ended attempt record (anything with the ``Attempt`` model's attribute names)."""
        return cls(
            number=int(attempt.number),
            end_reason=EndReason(attempt.end_reason or EndReason.FAILED),
            step_at_start=int(attempt.step_at_start or 0),
            step_at_end=int(attempt.step_at_end or 0),
            error=attempt.error,
            started=getattr(attempt, "start_time", None) is not None,
        )


@dataclass(frozen=True, kw_only=True)
class FinalCheckpoint:
    """What the controller holds of a checkpoint at the run's last step (``training_steps``)."""

    recorded: bool
    """A checkpoint row at ``training_steps`` exists, or the controller found it on disk itself."""
    inside: bool
    """Its path is the run's own ``<checkpoint dir>/<run name>/step-<training_steps>``."""
    verified: bool | None = None
    """The controller checked its manifest and files (``shared.checkpoint_manifest.check_step``):
    ``True``/``False``; ``None`` where it cannot see that file system (``Settings.verify_checkpoints``)."""
    problems: tuple[str, ...] = ()
    """What the verification found wrong."""


NO_FINAL_CHECKPOINT = FinalCheckpoint(recorded=False, inside=False)


def is_complete(final: FinalCheckpoint) -> bool:
    """Whether the run has trained all its steps: a committed checkpoint at ``training_steps``,
    recorded inside the run's checkpoint directory, and intact where the controller can look.
    A worker's ``finished`` alone never completes a run."""
    return final.recorded and final.inside and final.verified is not False


def incomplete_reason(final: FinalCheckpoint, training_steps: int) -> str:
    """Why ``is_complete`` said no, in one line for the user (empty when it said yes)."""
    if is_complete(final):
        return ""
    if not final.recorded:
        return f"the controller holds no committed checkpoint at step {training_steps}"
    if not final.inside:
        return f"the checkpoint of step {training_steps} is recorded outside the run's checkpoint directory"
    return f"the checkpoint of step {training_steps} failed verification: {'; '.join(final.problems)[:400]}"


class Verdict(StrEnum):
    CANCEL = "cancel"
    COMPLETE = "complete"
    FAIL = "fail"
    RESUBMIT = "resubmit"


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    message: str = ""
    not_before: float | None = None
    """For RESUBMIT: Unix time before which the next attempt must not be submitted (backoff)."""
    rollback: Rollback | None = None
    """For RESUBMIT after a divergence: where the next attempt resumes and the data it skips."""


def end_reason(
    job_state: SchedulerJobState,
    reported: Reported,
    *,
    complete: bool,
    cancel_requested: bool,
    exit_code: int | None = None,
) -> EndReason:
    """Why an ended job ended, from the scheduler's final state, the worker's last reports, the
    job's exit code and whether the run is complete (``is_complete``).

    The worker's word decides among clean exits (a stop it announced); the scheduler's decides
    for everything the worker could not announce (killed, preempted, node lost, vanished). A
    ``finished`` the controller cannot confirm is a failure (``false_finish``), never an ending.
    Between those: a ``diverged`` or ``hung`` report (or the controller's heartbeat timeout, whose
    cancel the scheduler reports as CANCELLED), then the failure class of the exit code
    (``shared.exit_codes.END_REASON_OF_EXIT``).
    """
    if cancel_requested and job_state is not SchedulerJobState.COMPLETED:
        return EndReason.CANCELLED
    if complete:
        return EndReason.FINISHED
    if reported.finished:
        return EndReason.FAILED
    if job_state not in _SCHEDULER_DECIDES:
        if reported.diverged is not None:
            return EndReason.DIVERGED
        if reported.hung is not None:
            return EndReason.HUNG
        if exit_code is not None and exit_code in END_REASON_OF_EXIT:
            return END_REASON_OF_EXIT[exit_code]
    match job_state:
        case SchedulerJobState.COMPLETED:
            if reported.error is not None:
                return EndReason.FAILED
            if reported.stopping_reason in (None, StopReason.DEADLINE):
                # A clean exit with steps left is by contract a graceful stop after a committed save.
                return EndReason.DEADLINE_STOP
            return EndReason.SIGNAL_STOP
        case SchedulerJobState.TIMEOUT:
            return EndReason.TIMEOUT_KILLED
        case SchedulerJobState.PREEMPTED:
            return EndReason.PREEMPTED
        case SchedulerJobState.NODE_FAIL | SchedulerJobState.BOOT_FAIL:
            return EndReason.NODE_FAIL
        case SchedulerJobState.CANCELLED:
            return EndReason.CANCELLED
        case SchedulerJobState.LOST:
            return EndReason.LOST
        case _:
            return EndReason.FAILED


def false_finish(reported: Reported, *, complete: bool) -> bool:
    """The worker said it finished, and the controller cannot confirm it (``is_complete`` said no)."""
    return reported.finished and not complete


def failure_message(
    job_state: SchedulerJobState,
    exit_code: int | None,
    reason: str | None,
    reported: Reported,
    *,
    unconfirmed: str = "",
) -> str:
    """The one line a user sees for a failed attempt: the worker's own error first; for a
    ``finished`` the controller could not confirm, why (``unconfirmed``)."""
    if unconfirmed:
        return f"the worker reported finished, but {unconfirmed}"
    lines = (reported.error or reported.hung or "").strip().splitlines()
    if lines:
        return lines[-1][:500]  # a traceback's last line says what went wrong
    parts = [f"job {job_state.value.lower()}"]
    if exit_code not in (None, 0):
        parts.append(f"exit code {exit_code}")
    if reason and reason not in parts:
        parts.append(reason)
    return ", ".join(parts)


# What the OS says when a checkpoint does not fit (ENOSPC / EDQUOT, as Python and shells print them).
_DISK_FULL = ("no space left on device", "disk quota exceeded", "errno 28]", "errno 122]", "enospc", "edquot")


def remedy(error: str | None) -> str:
    """What the user should do about a failure, when the error says (empty when it does not).

    Retrying cannot help a full checkpoint file system: the run stops at its failure budget, and
    the message says how to get it going again (the previous checkpoint is intact).
    """
    text = (error or "").lower()
    if any(marker in text for marker in _DISK_FULL):
        return (
            "the checkpoint file system is full: free space there (or lower training.keep_last_k, "
            "or point training.checkpoint_dir at a larger file system), then resume the run "
            "(`pyrecover resume <run>` or POST /api/v1/runs/<id>/resume); it continues from its "
            "newest committed checkpoint, which a failed save never touches"
        )
    return ""


_RESUME = "`pyrecover resume <run>` or POST /api/v1/runs/<id>/resume"
_REMEDIES = {
    EndReason.CONFIG_ERROR: (
        "the worker rejected the run's configuration, and every retry would too: fix the field the "
        "error names (a path the compute nodes cannot read, a changed immutable field, ...) with "
        f"`pyrecover extend` / PATCH /api/v1/runs/<id> or submit a corrected run, then resume ({_RESUME})"
    ),
    EndReason.INTEGRITY_ERROR: (
        "no committed checkpoint of the run verifies; the bad ones were moved to quarantine and nothing "
        "was deleted: check them (`pyrecover checkpoint verify`), restore a good one as step-<N>/ in the "
        f"run's checkpoint directory and resume ({_RESUME}); to start over from step 0 instead, set "
        "policy.allow_restart_from_scratch: true and resume"
    ),
    EndReason.RESTART_REFUSED: (
        "the run's directory holds its past (quarantined or unverifiable checkpoints, loss.csv rows) but "
        "no committed checkpoint verifies, so the worker would not start from step 0 over it: restore a "
        f"good checkpoint as step-<N>/ and resume ({_RESUME}), or set policy.allow_restart_from_scratch: "
        "true (PATCH /api/v1/runs/<id>) and resume to start over (nothing is deleted)"
    ),
}


def remedy_for(reason: EndReason) -> str:
    """What the user should do after an ending that fails the run at once (``FATAL_END_REASONS``)."""
    return _REMEDIES.get(reason, "")


def rollback_for(divergence: Divergence | None, committed_step: int) -> Rollback | None:
    """Where the next attempt resumes after ``divergence`` (the newest since the last resume), or
    None: no divergence, nothing committed to roll back to, or the run has since committed past it
    (the window was skipped and trained beyond, so ``latest`` is right again)."""
    if divergence is None or divergence.committed_step is None:
        return None
    if committed_step > divergence.committed_step:
        return None
    return Rollback(
        from_step=divergence.committed_step,
        skip_to=divergence.window_end,
        window_start=divergence.window_start,
    )


HEARTBEAT_FLOOR_S = 300.0
"""No derived heartbeat timeout is shorter: a slow report path or a GC pause is not a hang."""
HEARTBEAT_FACTOR = 10.0
"""A report may be this many report intervals (``logging_frequency`` × the step time) late."""


def heartbeat_timeout(
    policy: PolicySpec,
    training: TrainingFields,
    *,
    step_seconds: float | None,
    save_seconds: float,
    load_seconds: float = 0.0,
) -> float:
    """How long a RUNNING attempt may go without a report before it is cancelled and ended ``hung``.

    ``policy.heartbeat_timeout_seconds`` when set. Otherwise, with a step time reported by this
    attempt (``step_seconds``, the slowest recent one): ``max(HEARTBEAT_FACTOR × logging_frequency
    × step, HEARTBEAT_FLOOR_S)`` plus twice the longest save the run reported and the attempt's
    checkpoint load, so a long save or load never triggers it. Before any step was reported:
    twice the worker's own start-up limit (``hang_startup_seconds``), its watchdog is the first layer.
    """
    if policy.heartbeat_timeout_seconds is not None:
        return float(policy.heartbeat_timeout_seconds)
    slack = 2.0 * max(save_seconds, 0.0) + max(load_seconds, 0.0)
    if step_seconds is None or step_seconds <= 0:
        return max(2.0 * training.hang_startup_seconds, HEARTBEAT_FLOOR_S) + slack
    interval = training.logging_frequency * step_seconds
    return max(HEARTBEAT_FACTOR * interval, HEARTBEAT_FLOOR_S) + slack


def since_resume(history: Sequence[AttemptOutcome], resumed_after: int) -> list[AttemptOutcome]:
    """The attempts that count against the budget: those after the user last resumed the run.

    ``resumed_after`` is the number of the run's last attempt when a user resumed it (0: never).
    """
    return [o for o in history if o.number > resumed_after]


def attempts_without_progress(history: Sequence[AttemptOutcome], resumed_after: int = 0) -> int:
    """How many of the newest attempts in a row (since the last resume) committed no new checkpoint."""
    count = 0
    for outcome in reversed(since_resume(history, resumed_after)):
        if outcome.never_ran:
            continue
        if outcome.made_progress:
            break
        count += 1
    return count


def backoff_seconds(history: Sequence[AttemptOutcome], policy: PolicySpec) -> float:
    """Delay before the next submission: base × 2^(k-1) for k trailing failures (capped at 1 h)."""
    k = 0
    for outcome in reversed(history):
        if outcome.never_ran:
            continue
        if outcome.end_reason not in BACKOFF_REASONS:
            break
        k += 1
    if k == 0 or policy.backoff_seconds <= 0:
        return 0.0
    return float(min(3600.0, policy.backoff_seconds * 2 ** (k - 1)))


def next_step(
    *,
    training_steps: int,
    committed_step: int,
    complete: bool,
    history: Sequence[AttemptOutcome],
    policy: PolicySpec,
    now: float,
    resumed_after: int = 0,
    cancel_requested: bool = False,
    divergence: Divergence | None = None,
) -> Decision:
    """What happens to a run whose newest attempt ended (``history`` is the whole chain, oldest first).

    In this order: a cancel the user asked for ends the run CANCELLED; all steps committed
    (``complete``, from ``is_complete``) COMPLETE it; the failure budget
    (``policy.max_failures_without_progress`` attempts in a row without a new checkpoint) or
    ``policy.max_attempts`` FAIL it, both counted since the user last resumed it
    (``resumed_after``); otherwise the next attempt is submitted, after a backoff when the last
    endings were failures.

    Before the budget: a newest attempt that ended with a config error, an integrity error or a
    refused fresh start (``FATAL_END_REASONS``) FAILs the run at once, saying what to fix; one that
    ``diverged`` (``divergence``: its event) FAILs it under ``on_divergence: fail`` and, under
    ``rollback``, resubmits with a ``Decision.rollback`` up to ``policy.max_rollbacks`` times.
    """
    if cancel_requested:
        return Decision(verdict=Verdict.CANCEL, message="cancelled by the user")
    if complete:
        return Decision(verdict=Verdict.COMPLETE, message=f"trained all {training_steps} steps")
    counted = since_resume(history, resumed_after)
    last = counted[-1] if counted else None
    if last is not None and last.end_reason in FATAL_END_REASONS:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"attempt {last.number} ended {last.end_reason.value}: {last.error or 'no message'}. "
            f"Not retried. What to do: {remedy_for(last.end_reason)}",
        )
    if last is not None and last.end_reason is EndReason.DIVERGED:
        return _after_divergence(last, counted, policy, divergence, committed_step, training_steps)
    last_error = next((o.error for o in reversed(counted) if o.error), None)
    suffix = f"; last error: {last_error}" if last_error else ""
    if hint := remedy(last_error):
        suffix += f". What to do: {hint}"
    stalled = attempts_without_progress(counted)
    if stalled >= policy.max_failures_without_progress:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"{stalled} attempts in a row committed no new checkpoint "
            f"(max_failures_without_progress={policy.max_failures_without_progress}){suffix}",
        )
    if len(counted) >= policy.max_attempts:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"reached max_attempts={policy.max_attempts} "
            f"at step {committed_step}/{training_steps}{suffix}",
        )
    delay = backoff_seconds(counted, policy)
    return Decision(verdict=Verdict.RESUBMIT, not_before=now + delay if delay else None)


_DIVERGES_FROM_THE_START = (
    "No checkpoint was committed before it, so there is nothing to roll back to: the training "
    "diverges from its start. What to do: lower training.learning_rate (`pyrecover extend` / PATCH "
    f"/api/v1/runs/<id>, then resume: {_RESUME}), or submit a new run that trains more stably "
    "(model_dtype bf16, or mixed_precision: true instead of pure fp16)"
)


def _after_divergence(
    last: AttemptOutcome,
    counted: Sequence[AttemptOutcome],
    policy: PolicySpec,
    divergence: Divergence | None,
    committed_step: int,
    training_steps: int,
) -> Decision:
    what = (
        f"attempt {last.number} diverged: {divergence.message if divergence else last.error or 'no message'}"
    )
    nothing_committed = divergence is not None and divergence.committed_step is None
    if policy.on_divergence is OnDivergence.FAIL:
        if nothing_committed:
            return Decision(
                verdict=Verdict.FAIL,
                message=f"{what} (policy.on_divergence=fail). {_DIVERGES_FROM_THE_START}",
            )
        return Decision(
            verdict=Verdict.FAIL,
            message=f"{what} (policy.on_divergence=fail; nothing after step {committed_step} was "
            "committed; `rollback` would resume from the last checkpoint past the bad data window)",
        )
    rollbacks = sum(1 for o in counted if o.end_reason is EndReason.DIVERGED)
    if rollbacks > policy.max_rollbacks:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"{what}; diverged {rollbacks} times since the last resume "
            f"(max_rollbacks={policy.max_rollbacks})",
        )
    if len(counted) >= policy.max_attempts:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"{what}; reached max_attempts={policy.max_attempts} "
            f"at step {committed_step}/{training_steps}",
        )
    rollback = rollback_for(divergence, committed_step)
    if rollback is None:
        return Decision(
            verdict=Verdict.FAIL,
            message=f"{what}; no committed checkpoint to roll back to (policy.on_divergence=rollback)"
            + (f". {_DIVERGES_FROM_THE_START}" if nothing_committed else ""),
        )
    return Decision(
        verdict=Verdict.RESUBMIT, rollback=rollback, message=f"{what}; the next attempt {rollback.describe()}"
    )
