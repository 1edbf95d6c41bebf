"""Ending an attempt: its end reason, then the run's next step (complete, fail or requeue).

Also home of ``TickContext``, what every step of a pass works with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from controller.reconciler import facts
from controller.reconciler.decide import AttemptOutcome, Verdict, end_reason, failure_message, next_step
from controller.scheduler.base import JobStatus, Scheduler, SchedulerError
from shared.states import EndReason, RunState, SchedulerJobState

log = logging.getLogger(__name__)

ERROR_REASONS = frozenset({EndReason.FAILED, EndReason.LOST, EndReason.NODE_FAIL, EndReason.TIMEOUT_KILLED})


@dataclass(frozen=True)
class TickContext:
    settings: Any
    session_factory: Callable[[], Session]
    scheduler: Callable[[str], Scheduler]
    """The backend instance for a scheduler name (one per name, kept by the Reconciler)."""
    now: Callable[[], float]
    """Unix seconds; a fake clock in tests."""
    wake: Callable[[], None]
    """Ask for another pass right away (e.g. after deciding to resubmit)."""


def end_attempt(
    ctx: TickContext, session: Session, run: Any, attempt: Any, status: JobStatus, now: float
) -> None:
    """Record why the attempt ended, then decide the run's next step (caller commits)."""
    spec = facts.run_spec(run)
    committed = facts.committed_step(session, run.id)
    reported = facts.reported(session, attempt)
    reason = end_reason(
        status.state,
        reported,
        reached_training_steps=committed >= spec.training.training_steps,
        cancel_requested=facts.is_cancel_requested(run),
    )
    error = None
    if reason in ERROR_REASONS:
        error = failure_message(status.state, status.exit_code, status.reason, reported)
    facts.end_attempt(session, attempt, reason, status, committed, error, now)
    if reason is EndReason.TIMEOUT_KILLED:
        facts.record_event(
            session,
            run,
            "missed_deadline",
            f"attempt {attempt.number} was killed at its time limit (the time-aware stop missed)",
        )
    successor = facts.successor_of(session, attempt)
    if successor is not None and (successor.step_at_start or 0) < committed:
        # Pre-queued while this attempt was still saving: it resumes from what this one committed
        # (its ``afterany`` dependency holds it until now), so progress is counted from there.
        successor.step_at_start = committed
    if RunState(run.state).terminal:
        return
    if facts.is_cancel_requested(run):  # whatever the job made of the SIGTERM, the user asked to stop
        if successor is not None:
            _cancel_successor(ctx, session, successor, now)
        facts.finish_run(session, run, RunState.CANCELLED, "cancelled by the user", now)
        return
    history = [
        AttemptOutcome(
            number=a.number,
            end_reason=EndReason(a.end_reason or EndReason.FAILED),
            step_at_start=a.step_at_start or 0,
            step_at_end=a.step_at_end or 0,
            error=a.error,
        )
        for a in facts.ended_attempts(session, run.id)
    ]
    # The run keeps the count (``resume`` resets it: a resumed run gets its failure budget afresh).
    progressed = history[-1].made_progress if history else False
    run.failures_without_progress = 0 if progressed else (run.failures_without_progress or 0) + 1
    decision = next_step(
        training_steps=spec.training.training_steps,
        committed_step=committed,
        history=history,
        policy=spec.policy,
        now=now,
        stalled=run.failures_without_progress,
    )
    if decision.verdict is Verdict.COMPLETE:
        if successor is not None:
            _cancel_successor(ctx, session, successor, now)
        facts.finish_run(session, run, RunState.COMPLETED, decision.message, now)
    elif decision.verdict is Verdict.FAIL:
        if successor is not None:
            _cancel_successor(ctx, session, successor, now)
        facts.finish_run(session, run, RunState.FAILED, decision.message, now)
    else:
        # With a pre-queued successor the run just waits for it; otherwise the next pass submits.
        message = f"attempt {attempt.number} ended ({reason.value})"
        facts.requeue_run(session, run, None if successor else decision.not_before, message, now)
        if successor is None:
            ctx.wake()


def _cancel_successor(ctx: TickContext, session: Session, successor: Any, now: float) -> None:
    """A pre-queued successor turned out unnecessary: cancel its job and end it ``cancelled``."""
    if successor.external_id:
        try:
            ctx.scheduler(successor.backend).cancel(successor.external_id)
        except SchedulerError as exc:
            log.warning("cancel of the pre-queued successor %s failed: %s", successor.external_id, exc)
    status = JobStatus(
        job_id=successor.external_id or "",
        state=SchedulerJobState.CANCELLED,
        reason="pre-queued successor no longer needed",
    )
    facts.end_attempt(
        session, successor, EndReason.CANCELLED, status, successor.step_at_start or 0, None, now
    )
