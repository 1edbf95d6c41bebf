"""Ingesting worker reports: idempotent, and a handful of queries per batch whatever its size.

Each event is stored at most once under ``(run_id, attempt, seq)``: the batch's already-stored
seqs are read in one query, only the new events are inserted and applied, so a retried or
late-spooled batch changes nothing twice. Applying an event:

* ``started``: attempt start/training-start times, start-up and checkpoint-load time,
  attempt PENDING → RUNNING and run QUEUED → RUNNING;
* ``progress``: a metric point; run progress (monotone);
* ``checkpoint_committed``: a checkpoint row (once per step), the run's latest checkpoint;
* ``checkpoints_deleted``: those rows marked deleted (``controller.services.checkpoint_retention``);
* ``stopping``: attempt → STOPPING; ``finished`` / ``failed``: logged (error text kept);
* ``warning``: an event in the run's log.

Values the schema admits but the store cannot hold are refused (422) or made storable first: see
``controller.services.report_checks``.

The reconciler owns every decision (the end reason, the next attempt); reports only record facts.
The reply carries the run's pending action (consumed once delivered), or ``stop`` after a cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, WorkerEventRecord
from controller.db.types import to_datetime, utcnow
from controller.services import checkpoint_retention
from controller.services.errors import AttemptNotFound, RunNotFound
from controller.services.report_checks import check_batch, finite_or_none
from controller.state_machine import record_run_event, transition_attempt, transition_run
from shared.events import ENDING_EVENT_TYPES, WorkerAction
from shared.schemas import (
    CheckpointCommittedEvent,
    CheckpointsDeletedEvent,
    FailedEvent,
    FinishedEvent,
    ProgressEvent,
    ReportBatch,
    ReportReply,
    StartedEvent,
    StoppingEvent,
    WarningEvent,
)
from shared.states import ATTEMPT_TRANSITIONS, AttemptState, RunState


@dataclass(frozen=True)
class IngestResult:
    reply: ReportReply
    wake_reconciler: bool
    """A new ``stopping``/``finished``/``failed`` event: the reconciler should look now."""


def ingest(
    session: Session, run: Run | int, batch: ReportBatch, *, now: datetime | None = None
) -> IngestResult:
    now = now or utcnow()
    batch = check_batch(batch)  # InvalidReport (422) before anything is read or stored
    if not isinstance(run, Run):
        found = session.get(Run, run)
        if found is None:
            raise RunNotFound(run)
        run = found
    attempts = {a.number: a for a in session.scalars(select(Attempt).where(Attempt.run_id == run.id)).all()}
    attempt = attempts.get(batch.attempt)
    if attempt is None:
        raise AttemptNotFound(f"run {run.id} has no attempt {batch.attempt}")
    seqs = [e.seq for e in batch.events]
    stored = set(
        session.scalars(
            select(WorkerEventRecord.seq).where(
                WorkerEventRecord.run_id == run.id,
                WorkerEventRecord.attempt == batch.attempt,
                WorkerEventRecord.seq.in_(seqs),
            )
        ).all()
    )
    new = []
    for event in sorted(batch.events, key=lambda e: e.seq):
        if event.seq not in stored:
            stored.add(event.seq)  # also drops a seq repeated inside the batch
            new.append(event)
    if new:
        # Core executemany on the session's connection: neither the unit of work nor the ORM's
        # bulk-insert path (a third of a 32-event batch's cost) on the hot path.
        session.connection().execute(
            insert(WorkerEventRecord),
            [
                {
                    "run_id": run.id,
                    "attempt": batch.attempt,
                    "seq": e.seq,
                    "type": e.type,
                    "time": to_datetime(e.time),
                    "payload": e.model_dump(mode="json"),
                    "received_at": now,
                }
                for e in new
            ],
        )
    steps = [e.step for e in new if isinstance(e, CheckpointCommittedEvent)]
    known_steps = (
        set(
            session.scalars(
                select(Checkpoint.step).where(Checkpoint.run_id == run.id, Checkpoint.step.in_(steps))
            ).all()
        )
        if steps
        else set()
    )
    metrics: list[dict[str, object]] = []
    for event in new:
        if isinstance(event, ProgressEvent):
            metrics.append(_metric(run, attempt, event))
        else:
            _apply(session, run, attempt, event, known_steps)
    if metrics:
        session.connection().execute(insert(Metric), metrics)
    if new:
        attempt.last_report_at = now
        run.attempts_count = max(run.attempts_count or 0, max(attempts))
    action = _take_action(session, run)
    reply = ReportReply(accepted=len(new), duplicates=len(batch.events) - len(new), action=action)
    return IngestResult(reply=reply, wake_reconciler=any(e.type in ENDING_EVENT_TYPES for e in new))


def _take_action(session: Session, run: Run) -> WorkerAction:
    """The action for this reply: ``stop`` after a cancel, else the pending request (delivered once)."""
    if run.cancel_requested:
        return WorkerAction.STOP
    action = WorkerAction(run.pending_action or WorkerAction.NONE)
    if action is WorkerAction.NONE:
        return action
    run.pending_action = WorkerAction.NONE
    record_run_event(
        session, run, kind="action_delivered", message=f"{action.value} request delivered to the worker"
    )
    return action


def _apply(
    session: Session,
    run: Run,
    attempt: Attempt,
    event: StartedEvent
    | ProgressEvent
    | CheckpointCommittedEvent
    | CheckpointsDeletedEvent
    | StoppingEvent
    | FinishedEvent
    | FailedEvent
    | WarningEvent,
    known_steps: set[int],
) -> None:
    at = to_datetime(event.time)
    assert at is not None
    if isinstance(event, CheckpointCommittedEvent):
        _checkpoint(session, run, attempt, event, at, known_steps)
    elif isinstance(event, CheckpointsDeletedEvent):
        checkpoint_retention.mark_deleted(session, run, event.steps, at)
    elif isinstance(event, StartedEvent):
        _started(session, run, attempt, event, at)
    elif isinstance(event, StoppingEvent):
        if AttemptState.STOPPING in ATTEMPT_TRANSITIONS[AttemptState(attempt.state)]:
            transition_attempt(
                session, attempt, AttemptState.STOPPING, reason=f"worker stopping: {event.reason}"
            )
        else:
            attempt.stopping_time = attempt.stopping_time or at
        record_run_event(
            session,
            run,
            kind="stopping",
            message=f"attempt {attempt.number} stopping at step {event.step} ({event.reason})",
        )
    elif isinstance(event, FinishedEvent):
        run.current_step = max(run.current_step or 0, event.step)
        record_run_event(
            session, run, kind="finished", message=f"attempt {attempt.number} finished at step {event.step}"
        )
    elif isinstance(event, FailedEvent):
        attempt.error = event.error
        run.last_error = event.error
        last = event.error.strip().splitlines()[-1:] or ["(no message)"]
        record_run_event(
            session, run, kind="worker_failed", message=f"attempt {attempt.number} failed: {last[0][:500]}"
        )
    elif isinstance(event, WarningEvent):
        session.add(
            Event(
                run_id=run.id,
                time=at,
                kind=f"warning:{event.kind}",
                message=event.message,
                data={"step": event.step},
            )
        )


def _metric(run: Run, attempt: Attempt, event: ProgressEvent) -> dict[str, object]:
    run.current_step = max(run.current_step or 0, event.step)
    run.tokens_seen = max(run.tokens_seen or 0, event.tokens_seen)
    return {
        "run_id": run.id,
        "attempt": attempt.number,
        "step": event.step,
        "time": to_datetime(event.time),
        # NaN/inf (a diverged loss) cannot go out as JSON: stored as "no value", never a 500 later.
        "loss": finite_or_none(event.loss),
        "lr": finite_or_none(event.lr),
        "tokens_per_s": finite_or_none(event.tokens_per_s),
        "step_time": finite_or_none(event.step_time),
        "grad_norm": finite_or_none(event.grad_norm),
        "mfu": finite_or_none(event.mfu),
        "tokens_seen": event.tokens_seen,
    }


def _started(session: Session, run: Run, attempt: Attempt, event: StartedEvent, at: datetime) -> None:
    attempt.training_started_at = at
    attempt.startup_s = event.startup_seconds
    attempt.checkpoint_load_s = event.checkpoint_load_seconds
    attempt.resumed_from = event.resumed_from
    if attempt.step_at_start is None:
        attempt.step_at_start = event.resume_step
    if event.deadline is not None and attempt.deadline is None:
        attempt.deadline = to_datetime(event.deadline)
    if attempt.start_time is None:
        begin = event.time - event.startup_seconds - event.checkpoint_load_seconds
        attempt.start_time = to_datetime(begin)
    # A SUBMITTING attempt is left to the reconciler, which is about to record its job id.
    if attempt.state is AttemptState.PENDING:
        transition_attempt(session, attempt, AttemptState.RUNNING, reason="the worker started")
    if RunState(run.state) is RunState.QUEUED and attempt.state is AttemptState.RUNNING:
        transition_run(session, run, RunState.RUNNING, reason=f"attempt {attempt.number} started")
    where = f"from {event.resumed_from} (step {event.resume_step})" if event.resumed_from else "fresh"
    record_run_event(
        session, run, kind="started", message=f"attempt {attempt.number} started training {where}"
    )


def _checkpoint(
    session: Session,
    run: Run,
    attempt: Attempt,
    event: CheckpointCommittedEvent,
    at: datetime,
    known: set[int],
) -> None:
    if event.step not in known:
        known.add(event.step)
        session.add(
            Checkpoint(
                run_id=run.id,
                attempt_id=attempt.id,
                attempt=attempt.number,
                step=event.step,
                path=event.path,
                format=event.format,
                size_bytes=event.size_bytes,
                save_seconds=event.save_seconds,
                stall_seconds=event.stall_seconds,
                async_save=event.async_save,
                tokens_seen=event.tokens_seen,
                final=event.final,
                committed_at=at,
            )
        )
    else:
        checkpoint_retention.mark_on_disk(session, run.id, event.step)
    attempt.checkpoint_stall_s = (attempt.checkpoint_stall_s or 0.0) + event.stall_seconds
    if attempt.last_commit_at is None or at > attempt.last_commit_at:
        attempt.last_commit_at = at
    if run.latest_checkpoint_step is None or event.step > run.latest_checkpoint_step:
        run.latest_checkpoint_step = event.step
    run.current_step = max(run.current_step or 0, event.step)
