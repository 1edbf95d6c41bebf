"""Where resubmission is decided: every rule, as pure functions of explicit facts.

No DB, no scheduler, no clock: the reconciler (``controller.reconciler.ending``) gathers the facts
(the run's committed progress, its policy, the attempt chain, where the user resumed it, what the
worker reported, what the scheduler says, the time) and asks these functions

1. why the attempt ended (``end_reason``), and which endings carry an error (``ERROR_REASONS``,
   ``failure_message``, ``remedy``);
2. what happens to the run next (``next_step``): CANCEL, COMPLETE, FAIL or RESUBMIT, with the
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
    job_state: SchedulerJobState, reported: Reported, *, reached_training_steps: bool, cancel_requested: bool
) -> EndReason:
    """Why an ended job ended, from the scheduler's final state and the worker's last reports.

    The worker's word decides among clean exits (a stop it announced); the scheduler's decides
    for everything the worker could not announce (killed, preempted, node lost, vanished).
    """
    if cancel_requested and job_state is not SchedulerJobState.COMPLETED:
        return EndReason.CANCELLED
    if reported.finished or reached_training_steps:
        return EndReason.FINISHED
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


def failure_message(
    job_state: SchedulerJobState, exit_code: int | None, reason: str | None, reported: Reported
) -> str:
    """The one line a user sees for a failed attempt: the worker's own error first."""
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
    history: Sequence[AttemptOutcome],
    policy: PolicySpec,
    now: float,
    resumed_after: int = 0,
    cancel_requested: bool = False,
) -> Decision:
    """What happens to a run whose newest attempt ended (``history`` is the whole chain, oldest first).

    In this order: a cancel the user asked for ends the run CANCELLED; all steps committed (or
    the worker's ``finished``) COMPLETE it; the failure budget (``policy.max_failures_without_progress``
    attempts in a row without a new checkpoint) or ``policy.max_attempts`` FAIL it, both counted
    since the user last resumed it (``resumed_after``); otherwise the next attempt is submitted,
    after a backoff when the last endings were failures.
    """
    if cancel_requested:
        return Decision(verdict=Verdict.CANCEL, message="cancelled by the user")
    if committed_step >= training_steps or (history and history[-1].end_reason is EndReason.FINISHED):
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
