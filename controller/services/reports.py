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
* ``warning``: an event in the run's log;
* ``hung`` / ``diverged``: a readable event in the run's log, the facts in its data (suspect ranks
  and hosts, where the stacks are; the divergence's step and data window). The worker follows each
  with ``failed``, which ends the attempt as today; what a hang or a divergence should change
  (end reason, node exclusion, ``on_divergence``) is the reconciler's to decide, from these events.

Values the schema admits but the store cannot hold are refused (422) or made storable first: see
``controller.services.report_checks``. Claims are checked against what the controller knows
(``controller.services.claims``): no step beyond the run's end, checkpoints only in the run's own
directory; a report of an attempt that has ended, or of a run that is over, is recorded for its
attempt but changes no state (and no progress of a run that is over).

The reconciler owns every decision (the end reason, the next attempt); reports only record facts.
The reply carries the run's pending action (consumed once delivered), or ``stop`` after a cancel;
a late report (``Scope.live`` false) gets neither: the process that sent it may be the successor
delivering an old spool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, WorkerEventRecord
from controller.db.types import to_datetime, utcnow
from controller.services import checkpoint_retention
from controller.services.claims import Scope, check_events, scope
from controller.services.errors import AttemptNotFound, RunNotFound
from controller.services.report_checks import check_batch, finite_or_none
from controller.state_machine import record_run_event, transition_attempt, transition_run
from shared.events import ENDING_EVENT_TYPES, WorkerAction
from shared.schemas import (
    CheckpointCommittedEvent,
    CheckpointsDeletedEvent,
    DivergedEvent,
    FailedEvent,
    FinishedEvent,
    HungEvent,
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
    session: Session,
    run: Run | int,
    batch: ReportBatch,
    *,
    now: datetime | None = None,
    checkpoint_dir: Path | None = None,
) -> IngestResult:
    """Store ``batch`` once per event and apply it within its ``Scope``.

    ``checkpoint_dir``: the run's own checkpoint directory (``<root>/<run name>``); reported
    checkpoint paths must be its ``step-<N>`` (``ClaimRefused`` otherwise). ``None`` skips that
    check (only for callers that seed a database directly)."""
    now = now or utcnow()
    batch = check_batch(batch)  # InvalidReport (422) before anything is read or stored
    if not isinstance(run, Run):
        found = session.get(Run, run)
        if found is None:
            raise RunNotFound(run)
        run = found
    check_events(batch, training_steps=run.training_steps, checkpoint_dir=checkpoint_dir)
    attempts = {a.number: a for a in session.scalars(select(Attempt).where(Attempt.run_id == run.id)).all()}
    attempt = attempts.get(batch.attempt)
    if attempt is None:
        raise AttemptNotFound(f"run {run.id} has no attempt {batch.attempt}")
    allowed = scope(run, attempt)
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
            metrics.append(_metric(run, attempt, event, allowed))
        else:
            _apply(session, run, attempt, event, known_steps, allowed)
    if metrics:
        session.connection().execute(insert(Metric), metrics)
    if new:
        attempt.last_report_at = now
        if allowed.progress:
            run.attempts_count = max(run.attempts_count or 0, max(attempts))
    action = _take_action(session, run) if allowed.live else WorkerAction.NONE
    reply = ReportReply(accepted=len(new), duplicates=len(batch.events) - len(new), action=action)
    wake = allowed.live and any(e.type in ENDING_EVENT_TYPES for e in new)
    return IngestResult(reply=reply, wake_reconciler=wake)


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
    | WarningEvent
    | HungEvent
    | DivergedEvent,
    known_steps: set[int],
    allowed: Scope,
) -> None:
    at = to_datetime(event.time)
    assert at is not None
    late = "" if allowed.live else f" (late report: attempt {attempt.number} has ended)"
    if isinstance(event, CheckpointCommittedEvent):
        _checkpoint(session, run, attempt, event, at, known_steps, allowed)
    elif isinstance(event, CheckpointsDeletedEvent):
        # A fact about the file system even when late: the files are gone whoever reports it.
        checkpoint_retention.mark_deleted(session, run, event.steps, at, move_latest=allowed.progress)
    elif isinstance(event, StartedEvent):
        _started(session, run, attempt, event, at, allowed)
    elif isinstance(event, StoppingEvent):
        if allowed.live and AttemptState.STOPPING in ATTEMPT_TRANSITIONS[AttemptState(attempt.state)]:
            transition_attempt(
                session, attempt, AttemptState.STOPPING, reason=f"worker stopping: {event.reason}"
            )
        else:
            attempt.stopping_time = attempt.stopping_time or at
        record_run_event(
            session,
            run,
            kind="stopping",
            message=f"attempt {attempt.number} stopping at step {event.step} ({event.reason}){late}",
        )
    elif isinstance(event, FinishedEvent):
        # A claim, not a fact: it moves no progress, and the run completes only on a checkpoint the
        # controller holds (controller/reconciler/decide.py:is_complete).
        record_run_event(
            session,
            run,
            kind="finished",
            message=f"attempt {attempt.number} reported finished at step {event.step}{late}",
        )
    elif isinstance(event, FailedEvent):
        if allowed.live or attempt.error is None:  # an ended attempt keeps the error it ended with
            attempt.error = event.error
        if allowed.live:
            run.last_error = event.error
        last = event.error.strip().splitlines()[-1:] or ["(no message)"]
        record_run_event(
            session,
            run,
            kind="worker_failed",
            message=f"attempt {attempt.number} failed: {last[0][:500]}{late}",
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
    elif isinstance(event, HungEvent):
        session.add(
            Event(
                run_id=run.id,
                time=at,
                kind="hung",
                message=hung_message(attempt.number, event),
                data=event.model_dump(mode="json", exclude={"seq", "type", "time"}),
            )
        )
    elif isinstance(event, DivergedEvent):
        message = f"attempt {attempt.number} diverged: {event.message}"
        session.add(
            Event(
                run_id=run.id,
                time=at,
                kind="diverged",
                message=message[:4000],
                data=event.model_dump(mode="json", exclude={"seq", "type", "time", "message"}),
            )
        )


def hung_message(attempt: int, event: HungEvent) -> str:
    """One readable line: where it stalled, who is suspected (rank and host), where the stacks are."""
    who = (
        "; ".join(f"rank {s.rank} on {s.host}: {s.reason}" for s in event.suspects[:8])
        or "no rank stands out (every rank waits on another)"
    )
    stacks = f"; stacks of rank {event.rank} in {event.stacks_path}" if event.stacks_path else ""
    return (
        f"attempt {attempt} hung in {event.phase} at step {event.step}: no progress for "
        f"{event.stalled_seconds:.0f} s (limit {event.limit_seconds:.0f} s), seen by rank {event.rank} on "
        f"{event.host}; suspects: {who}{stacks}"
    )[:4000]


def _metric(run: Run, attempt: Attempt, event: ProgressEvent, allowed: Scope) -> dict[str, object]:
    if allowed.progress:
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


def _started(
    session: Session, run: Run, attempt: Attempt, event: StartedEvent, at: datetime, allowed: Scope
) -> None:
    if not allowed.live:
        # The attempt's own figures, where its end left them empty; nothing else.
        attempt.training_started_at = attempt.training_started_at or at
        if attempt.resumed_from is None:
            attempt.resumed_from = event.resumed_from
        record_run_event(
            session,
            run,
            kind="started",
            message=f"attempt {attempt.number} started training (late report: the attempt has ended)",
        )
        return
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
    allowed: Scope,
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
    if not allowed.live and attempt.step_at_end is not None and event.step > attempt.step_at_end:
        # A late report (the attempt ended before it arrived): its figures follow what it committed.
        attempt.step_at_end = event.step
    if not allowed.progress:
        return
    if run.latest_checkpoint_step is None or event.step > run.latest_checkpoint_step:
        run.latest_checkpoint_step = event.step
    run.current_step = max(run.current_step or 0, event.step)
