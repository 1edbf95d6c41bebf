"""Ending an attempt: record why it ended, then carry out the run's next step.

``decide`` says what the end reason is and what happens next; this module gathers the facts it
needs from the store and applies the verdict (including the pre-queued successor's fate). Also
home of ``TickContext``, what every step of a pass works with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run
from controller.notify import outbox
from controller.reconciler import exclusions, ondisk, store
from controller.reconciler.decide import (
    ERROR_REASONS,
    NO_FINAL_CHECKPOINT,
    FinalCheckpoint,
    Verdict,
    end_reason,
    failure_message,
    false_finish,
    incomplete_reason,
    is_complete,
    next_step,
)
from controller.scheduler.base import JobStatus, Scheduler, SchedulerError
from controller.services.claims import SECURITY_EVENT
from controller.settings import Settings
from shared import checkpoint_manifest
from shared.paths import same_path, step_dir_name
from shared.schemas import RunCreate
from shared.states import AttemptState, EndReason, RunState, SchedulerJobState

log = logging.getLogger(__name__)

_FINAL_STATE = {
    Verdict.CANCEL: RunState.CANCELLED,
    Verdict.COMPLETE: RunState.COMPLETED,
    Verdict.FAIL: RunState.FAILED,
}


@dataclass(frozen=True)
class TickContext:
    settings: Settings
    session_factory: Callable[[], Session]
    scheduler: Callable[[str], Scheduler]
    """The backend instance for a scheduler name (one per name, kept by the Reconciler)."""
    now: Callable[[], float]
    """Unix seconds; a fake clock in tests."""
    wake: Callable[[], None]
    """Ask for another pass right away (e.g. after deciding to resubmit)."""


def end_attempt(
    ctx: TickContext, session: Session, run: Run, attempt: Attempt, status: JobStatus, now: float
) -> None:
    """Record why the attempt ended, then decide the run's next step (caller commits)."""
    spec = store.run_spec(run)
    steps = spec.training.training_steps
    if spec.resources.scheduler in ctx.settings.verify_checkpoints:
        # Before progress is judged: what the attempt committed but never reported (module ondisk).
        directory = ctx.settings.resolve_checkpoint_dir(spec.training.checkpoint_dir) / run.name
        ondisk.record_unreported(session, run, attempt, directory, steps, now)
    committed = store.committed_step(session, run.id)
    reported = store.reported(session, attempt)
    final = NO_FINAL_CHECKPOINT
    if committed >= steps or reported.finished:
        final = final_checkpoint(ctx, session, run, attempt, spec, now)
    complete = is_complete(final)
    cancel = store.is_cancel_requested(run)
    reason = end_reason(
        status.state, reported, complete=complete, cancel_requested=cancel, exit_code=status.exit_code
    )
    error = None
    unconfirmed = incomplete_reason(final, steps) if false_finish(reported, complete=complete) else ""
    if unconfirmed:
        store.record_event(
            session,
            run,
            SECURITY_EVENT,
            f"attempt {attempt.number} reported finished, but {unconfirmed}: not believed",
        )
    if reason in ERROR_REASONS:
        error = failure_message(
            status.state, status.exit_code, status.reason, reported, unconfirmed=unconfirmed
        )
    committed = store.committed_step(session, run.id)  # a checkpoint found on disk counts
    store.record_end(session, attempt, reason, status, committed, error, now)
    excluded = exclusions.note_end(
        session, run, attempt, reason, status, spec, ctx.scheduler(attempt.backend), now
    )
    if (event := outbox.event_for_end_reason(reason)) is not None:
        outbox.record(session, run, event, f"attempt {attempt.number} ended {reason.value}: {error or ''}")
    if reason is EndReason.TIMEOUT_KILLED:
        store.record_event(
            session,
            run,
            "missed_deadline",
            f"attempt {attempt.number} was killed at its time limit (the time-aware stop missed)",
        )
    successor = store.successor_of(session, attempt)
    if successor is not None and (successor.step_at_start or 0) < committed:
        # Pre-queued while this attempt was still saving: it resumes from what this one committed
        # (its ``afterany`` dependency holds it until now), so progress is counted from there.
        successor.step_at_start = committed
    if RunState(run.state).terminal:
        return
    decision = next_step(
        training_steps=steps,
        committed_step=committed,
        complete=complete,
        history=store.history(session, run.id),
        policy=spec.policy,
        now=now,
        resumed_after=run.resumed_after_attempt or 0,
        cancel_requested=store.is_cancel_requested(run),
        divergence=reported.diverged if reason is EndReason.DIVERGED else None,
    )
    if decision.rollback is not None:
        rollback = decision.rollback
        store.record_event(
            session,
            run,
            "rollback",
            decision.message,
            data={
                "attempt": attempt.number,
                "from_step": rollback.from_step,
                "skip_from": rollback.window_start,
                "skip_to": rollback.skip_to,
            },
        )
    if (
        decision.verdict is Verdict.RESUBMIT
        and successor is not None
        and excluded
        and successor.state == AttemptState.PENDING
    ):
        # Pre-queued with the exclusion list of before this end: it could start on the host this end
        # just blamed. Cancelled while it waits (it never ran: no failure counted, see
        # ``decide.AttemptOutcome.never_ran``); the next pass submits one that excludes the host. One
        # that already started is left to run: cancelling it would waste what it has done.
        _cancel_successor(ctx, session, successor, now)
        successor = None
    if decision.verdict is Verdict.RESUBMIT:
        # With a pre-queued successor the run just waits for it; otherwise the next pass submits.
        message = f"attempt {attempt.number} ended ({reason.value})"
        store.requeue_run(session, run, None if successor else decision.not_before, message)
        if successor is None:
            ctx.wake()
        return
    if successor is not None:
        _cancel_successor(ctx, session, successor, now)
    store.finish_run(session, run, _FINAL_STATE[decision.verdict], decision.message)


def final_checkpoint(
    ctx: TickContext, session: Session, run: Run, attempt: Attempt, spec: RunCreate, now: float
) -> FinalCheckpoint:
    """The facts ``decide.is_complete`` needs about the checkpoint at the run's last step.

    Only the run's own ``<checkpoint dir>/<run name>/step-<training_steps>`` is ever looked at,
    whatever path a report named. Where the controller sees the backend's file system
    (``Settings.verify_checkpoints``) it verifies that directory's manifest and files itself, and
    records a verified one it holds no report of (the report was lost with its worker).
    """
    steps = spec.training.training_steps
    directory = ctx.settings.resolve_checkpoint_dir(spec.training.checkpoint_dir) / run.name
    expected = directory / step_dir_name(steps)
    row = store.checkpoint_at(session, run.id, steps)
    visible = spec.resources.scheduler in ctx.settings.verify_checkpoints
    if not visible:
        if row is None:
            return NO_FINAL_CHECKPOINT
        return FinalCheckpoint(recorded=True, inside=same_path(row.path, expected))
    problems = tuple(checkpoint_manifest.check_step(expected, steps))
    if row is None:
        if problems:
            return NO_FINAL_CHECKPOINT
        manifest = checkpoint_manifest.read_manifest(expected)
        store.record_found_checkpoint(session, run, attempt, steps, str(expected), manifest, now)
        store.record_event(
            session, run, ondisk.FOUND_EVENT, f"verified the checkpoint of step {steps} on disk: {expected}"
        )
        return FinalCheckpoint(recorded=True, inside=True, verified=True)
    return FinalCheckpoint(
        recorded=True, inside=same_path(row.path, expected), verified=not problems, problems=problems
    )


def _cancel_successor(ctx: TickContext, session: Session, successor: Attempt, now: float) -> None:
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
    store.record_end(session, successor, EndReason.CANCELLED, status, successor.step_at_start or 0, None, now)
