"""Where resubmission is decided: every rule, as pure functions of explicit facts.

No DB, no scheduler, no clock: the reconciler (``controller.reconciler.ending``) gathers the facts
(the run's committed progress, its policy, the attempt chain, where the user resumed it, what the
worker reported, what the scheduler says, the time) and asks these functions

1. whether the run has trained all its steps (``is_complete``: a committed checkpoint at
   ``training_steps`` the controller holds, verified where it can see it — never the worker's word);
2. why the attempt ended (``end_reason``), and which endings carry an error (``ERROR_REASONS``,
   ``failure_message``, ``remedy``);
3. what happens to the run next (``next_step``): CANCEL, COMPLETE, FAIL or RESUBMIT, with the
   failure budget (``attempts_without_progress``) and the backoff (``backoff_seconds``) read off
   the attempt chain since the user last resumed the run — no counter is kept anywhere else.

Keeping them pure makes every rule a row in a table test (tests/controller/reconciler/test_decide.py).
See docs/architecture.md, "Where is resubmission decided".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.events import StopReason
from shared.schemas import PolicySpec
from shared.states import EndReason, SchedulerJobState

ERROR_REASONS = frozenset({EndReason.FAILED, EndReason.LOST, EndReason.NODE_FAIL, EndReason.TIMEOUT_KILLED})
"""Endings whose attempt record keeps an error message (``failure_message``)."""
# Endings that say something is wrong with the job itself; the next try waits (exponential backoff).
# A walltime stop, a timeout kill, a preemption or a node failure is the cluster's doing: retry at once.
BACKOFF_REASONS = frozenset({EndReason.FAILED, EndReason.LOST, EndReason.CANCELLED})


@dataclass(frozen=True, kw_only=True)
class Reported:
    """What the worker reported during the attempt (from the stored worker events)."""

    finished: bool = False
    stopping_reason: StopReason | None = None
    """The ``reason`` of the attempt's ``stopping`` event, if it sent one."""
    error: str | None = None
    """The ``error`` of a ``failed`` event."""


@dataclass(frozen=True, kw_only=True)
class AttemptOutcome:
    """One ended attempt, as far as the failure budget is concerned."""

    number: int
    end_reason: EndReason
    step_at_start: int
    step_at_end: int
    """The run's newest committed checkpoint step when the attempt ended."""
    error: str | None = None

    @property
    def made_progress(self) -> bool:
        return self.step_at_end > self.step_at_start

    @classmethod
    def of(cls, attempt: Any) -> AttemptOutcome:
        """From an ended attempt record (anything with the ``Attempt`` model's attribute names)."""
        return cls(
            number=int(attempt.number),
            end_reason=EndReason(attempt.end_reason or EndReason.FAILED),
            step_at_start=int(attempt.step_at_start or 0),
            step_at_end=int(attempt.step_at_end or 0),
            error=attempt.error,
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


def end_reason(
    job_state: SchedulerJobState, reported: Reported, *, complete: bool, cancel_requested: bool
) -> EndReason:
    """Why an ended job ended, from the scheduler's final state, the worker's last reports and
    whether the run is complete (``is_complete``).

    The worker's word decides among clean exits (a stop it announced); the scheduler's decides
    for everything the worker could not announce (killed, preempted, node lost, vanished). A
    ``finished`` the controller cannot confirm is a failure (``false_finish``), never an ending.
    """
    if cancel_requested and job_state is not SchedulerJobState.COMPLETED:
        return EndReason.CANCELLED
    if complete:
        return EndReason.FINISHED
    if reported.finished:
        return EndReason.FAILED
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
    lines = (reported.error or "").strip().splitlines()
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


def since_resume(history: Sequence[AttemptOutcome], resumed_after: int) -> list[AttemptOutcome]:
    """The attempts that count against the budget: those after the user last resumed the run.

    ``resumed_after`` is the number of the run's last attempt when a user resumed it (0: never).
    """
    return [o for o in history if o.number > resumed_after]


def attempts_without_progress(history: Sequence[AttemptOutcome], resumed_after: int = 0) -> int:
    """How many of the newest attempts in a row (since the last resume) committed no new checkpoint."""
    count = 0
    for outcome in reversed(since_resume(history, resumed_after)):
        if outcome.made_progress:
            break
        count += 1
    return count


def backoff_seconds(history: Sequence[AttemptOutcome], policy: PolicySpec) -> float:
    """Delay before the next submission: base × 2^(k-1) for k trailing failures (capped at 1 h)."""
    k = 0
    for outcome in reversed(history):
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
) -> Decision:
    """What happens to a run whose newest attempt ended (``history`` is the whole chain, oldest first).

    In this order: a cancel the user asked for ends the run CANCELLED; all steps committed
    (``complete``, from ``is_complete``) COMPLETE it; the failure budget
    (``policy.max_failures_without_progress`` attempts in a row without a new checkpoint) or
    ``policy.max_attempts`` FAIL it, both counted since the user last resumed it
    (``resumed_after``); otherwise the next attempt is submitted, after a backoff when the last
    endings were failures.
    """
    if cancel_requested:
        return Decision(verdict=Verdict.CANCEL, message="cancelled by the user")
    if complete:
        return Decision(verdict=Verdict.COMPLETE, message=f"trained all {training_steps} steps")
    counted = since_resume(history, resumed_after)
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
