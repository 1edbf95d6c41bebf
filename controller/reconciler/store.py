"""The reconciler's store: every read and write it makes on the database (the caller commits).

Everything the reconciler knows about models lives here, so the pass logic (``tick``,
``ending``, ``submission``) reads as the rules it implements. ``find_*`` return ``None`` for a
missing row; ``record_*`` write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, WorkerEventRecord
from controller.reconciler.decide import AttemptOutcome, Divergence, Reported
from controller.scheduler.base import JobStatus
from controller.services import issue_worker_token
from controller.state_machine import record_run_event, transition_attempt, transition_run
from shared.events import ENDING_EVENT_TYPES, EventType, StopReason
from shared.schemas import RunCreate
from shared.states import (
    ACTIVE_ATTEMPT_STATES,
    LIVE_ATTEMPT_STATES,
    SCHEDULER_OWNED_ATTEMPT_STATES,
    TERMINAL_RUN_STATES,
    WAITING_RUN_STATES,
    AttemptState,
    EndReason,
    RunState,
)


def ts(unix: float | None) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


# ---------------------------------------------------------------- reads
def find_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def find_attempt(session: Session, attempt_id: int) -> Attempt | None:
    return session.get(Attempt, attempt_id)


def run_spec(run: Run) -> RunCreate:
    return run.spec_model()


def is_cancel_requested(run: Run) -> bool:
    return bool(run.cancel_requested)


def committed_step(session: Session, run_id: int) -> int:
    step = session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.run_id == run_id))
    return int(step or 0)


def checkpoint_at(session: Session, run_id: int, step: int) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))


def last_attempt_number(session: Session, run_id: int) -> int:
    return int(session.scalar(select(func.max(Attempt.number)).where(Attempt.run_id == run_id)) or 0)


def has_live_attempt(session: Session, run_id: int) -> bool:
    q = select(Attempt.id).where(Attempt.run_id == run_id, Attempt.state.in_(LIVE_ATTEMPT_STATES))
    return session.scalar(q.limit(1)) is not None


def _due(now: float) -> list[ColumnElement[bool]]:
    busy = select(Attempt.run_id).where(Attempt.state.in_(ACTIVE_ATTEMPT_STATES))
    return [
        Run.state.in_(WAITING_RUN_STATES),
        Run.cancel_requested.is_(False),
        Run.id.not_in(busy),
        (Run.next_submit_at.is_(None)) | (Run.next_submit_at <= ts(now)),
    ]


def runs_due(session: Session, now: float) -> Sequence[Run]:
    """Runs waiting for their next attempt: PENDING/QUEUED, no attempt the scheduler owns, backoff over."""
    return session.scalars(select(Run).where(*_due(now)).order_by(Run.id)).all()


def is_due(session: Session, run_id: int, now: float) -> bool:
    """``runs_due``'s test for one run, read afresh (a pass's list of due runs may be stale)."""
    return session.scalar(select(Run.id).where(Run.id == run_id, *_due(now))) is not None


def runs_to_cancel(session: Session) -> Sequence[Run]:
    return session.scalars(
        select(Run).where(Run.cancel_requested.is_(True), Run.state.not_in(list(TERMINAL_RUN_STATES)))
    ).all()


def submitting_attempts(session: Session) -> Sequence[Attempt]:
    return session.scalars(select(Attempt).where(Attempt.state == AttemptState.SUBMITTING)).all()


def attempts_to_poll(session: Session) -> Sequence[Attempt]:
    return session.scalars(
        select(Attempt).where(
            Attempt.state.in_(SCHEDULER_OWNED_ATTEMPT_STATES), Attempt.external_id.is_not(None)
        )
    ).all()


def active_attempts(session: Session, run_id: int) -> Sequence[Attempt]:
    """The run's attempts that have not ended (submitting, queued, running or stopping)."""
    return session.scalars(
        select(Attempt).where(Attempt.run_id == run_id, Attempt.state.in_(ACTIVE_ATTEMPT_STATES))
    ).all()


def attempt_by_job(session: Session, backend: str, external_id: str) -> Attempt | None:
    return session.scalar(
        select(Attempt).where(Attempt.backend == backend, Attempt.external_id == external_id)
    )


def history(session: Session, run_id: int) -> list[AttemptOutcome]:
    """The run's ended attempts, oldest first, as the failure budget sees them."""
    q = select(Attempt).where(Attempt.run_id == run_id, Attempt.state == AttemptState.ENDED)
    return [AttemptOutcome.of(a) for a in session.scalars(q.order_by(Attempt.number))]


def successor_of(session: Session, attempt: Attempt) -> Attempt | None:
    return session.scalar(
        select(Attempt).where(
            Attempt.run_id == attempt.run_id,
            Attempt.number > attempt.number,
            Attempt.state != AttemptState.ENDED,
        )
    )


def _events(session: Session, attempt: Attempt, types: Sequence[EventType]) -> Sequence[WorkerEventRecord]:
    q = select(WorkerEventRecord).where(
        WorkerEventRecord.run_id == attempt.run_id,
        WorkerEventRecord.attempt == attempt.number,
        WorkerEventRecord.type.in_(types),
    )
    return session.scalars(q.order_by(WorkerEventRecord.seq)).all()


def stop_announced(session: Session, attempt: Attempt) -> bool:
    return bool(_events(session, attempt, [EventType.STOPPING]))


_FAULT_EVENT_TYPES = sorted({*ENDING_EVENT_TYPES, EventType.HUNG, EventType.DIVERGED})
HEARTBEAT_TIMEOUT_EVENT = "heartbeat_timeout"
"""The run event recorded when the controller cancels a RUNNING attempt that stopped reporting."""


def reported(session: Session, attempt: Attempt) -> Reported:
    """What the attempt's worker said about its end (its ``stopping``/``finished``/``failed``,
    ``hung`` and ``diverged`` events), and whether the controller timed out its heartbeat."""
    finished = False
    stopping: StopReason | None = None
    error: str | None = None
    hung: str | None = None
    diverged: Divergence | None = None
    for event in _events(session, attempt, _FAULT_EVENT_TYPES):
        payload: dict[str, Any] = dict(event.payload or {})
        if event.type == EventType.FINISHED:
            finished = True
        elif event.type == EventType.STOPPING:
            stopping = StopReason(payload.get("reason") or StopReason.DEADLINE)
        elif event.type == EventType.HUNG:
            phase, step, rank = payload.get("phase"), payload.get("step"), payload.get("rank")
            hung = f"hung in {phase} at step {step} (seen by rank {rank})"
        elif event.type == EventType.DIVERGED:
            diverged = divergence_of(payload)
        else:
            error = str(payload.get("error") or "the worker reported a failure")
    if hung is None:
        hung = heartbeat_timeout_message(session, attempt)
    return Reported(finished=finished, stopping_reason=stopping, error=error, hung=hung, diverged=diverged)


def divergence_of(payload: dict[str, Any]) -> Divergence:
    """A stored ``diverged`` event (validated on the way in) as ``decide`` reads it."""
    committed_cursor = payload.get("committed_cursor") or {}
    return Divergence(
        step=int(payload.get("step") or 0),
        message=str(payload.get("message") or "diverged"),
        committed_step=None if payload.get("committed_step") is None else int(payload["committed_step"]),
        window_start=(
            None
            if committed_cursor.get("chunks_consumed") is None
            else int(committed_cursor["chunks_consumed"])
        ),
        window_end=int((payload.get("cursor") or {}).get("chunks_consumed") or 0),
    )


def last_divergence(session: Session, run_id: int, after_attempt: int) -> Divergence | None:
    """The newest ``diverged`` event of the run's attempts numbered above ``after_attempt``."""
    event = session.scalar(
        select(WorkerEventRecord)
        .where(
            WorkerEventRecord.run_id == run_id,
            WorkerEventRecord.attempt > after_attempt,
            WorkerEventRecord.type == EventType.DIVERGED,
        )
        .order_by(WorkerEventRecord.attempt.desc(), WorkerEventRecord.seq.desc())
        .limit(1)
    )
    return None if event is None else divergence_of(dict(event.payload or {}))


def heartbeat_timeout_message(session: Session, attempt: Attempt) -> str | None:
    """The message of the controller's heartbeat timeout for this attempt, if it had one."""
    events = session.scalars(
        select(Event).where(Event.run_id == attempt.run_id, Event.kind == HEARTBEAT_TIMEOUT_EVENT)
    ).all()
    for event in events:
        if (event.data or {}).get("attempt") == attempt.number:
            return event.message
    return None


def running_attempts(session: Session) -> Sequence[Attempt]:
    """Attempts the scheduler says are RUNNING (the ones a heartbeat timeout applies to)."""
    return session.scalars(
        select(Attempt).where(Attempt.state == AttemptState.RUNNING, Attempt.external_id.is_not(None))
    ).all()


def recent_step_seconds(session: Session, attempt: Attempt, points: int = 20) -> float | None:
    """The slowest step time among the attempt's newest ``points`` progress reports (None: none yet)."""
    recent = (
        select(Metric.step_time)
        .where(Metric.run_id == attempt.run_id, Metric.attempt == attempt.number, Metric.step_time > 0)
        .order_by(Metric.step.desc())
        .limit(points)
        .subquery()
    )
    value = session.scalar(select(func.max(recent.c.step_time)))
    return float(value) if value is not None else None


def longest_save_seconds(session: Session, run_id: int) -> float:
    """The longest checkpoint save the run reported (0 when none)."""
    value = session.scalar(select(func.max(Checkpoint.save_seconds)).where(Checkpoint.run_id == run_id))
    return float(value or 0.0)


# ---------------------------------------------------------------- writes (the caller commits)
def add_attempt(
    session: Session,
    run: Run,
    *,
    number: int,
    backend: str,
    job_name: str,
    step_at_start: int,
    dependency: str | None,
    now: float,
) -> Attempt:
    run.attempts_count = max(run.attempts_count or 0, number)
    attempt = Attempt(
        run_id=run.id,
        number=number,
        backend=backend,
        job_name=job_name,
        state=AttemptState.SUBMITTING,
        step_at_start=step_at_start,
        dependency_job_id=dependency,
        submit_time=ts(now),
    )
    session.add(attempt)
    session.flush()
    return attempt


def issue_token(session: Session, run_id: int, attempt: int) -> str:
    """A fresh worker token for one attempt of the run (plaintext; only its hash is stored)."""
    return issue_worker_token(session, run_id, attempt=attempt)


def record_found_checkpoint(
    session: Session,
    run: Run,
    attempt: Attempt,
    step: int,
    path: str,
    manifest: dict[str, Any],
    now: float,
    *,
    final: bool = True,
) -> None:
    """A verified checkpoint the controller found on disk itself (its report was lost): recorded
    like a reported one, for the attempt that ended; ``final``: it is the run's last step's."""
    session.add(
        Checkpoint(
            run_id=run.id,
            attempt_id=attempt.id,
            attempt=attempt.number,
            step=step,
            path=path,
            format=str(manifest.get("format", "dcp"))[:16],
            size_bytes=int(manifest.get("size_bytes", 0) or 0),
            tokens_seen=int(manifest.get("tokens_seen", 0) or 0),
            final=final,
            committed_at=ts(now),
        )
    )
    if run.latest_checkpoint_step is None or step > run.latest_checkpoint_step:
        run.latest_checkpoint_step = step
    run.current_step = max(run.current_step or 0, step)
    session.flush()


def record_submitted(session: Session, run: Run, attempt: Attempt, external_id: str) -> None:
    attempt.external_id = external_id
    transition_attempt(session, attempt, AttemptState.PENDING)
    if RunState(run.state) is RunState.PENDING or (
        RunState(run.state) is RunState.QUEUED and run.next_submit_at is not None
    ):
        run.next_submit_at = None
    if RunState(run.state) is RunState.PENDING:
        transition_run(
            session, run, RunState.QUEUED, reason=f"attempt {attempt.number} submitted as {external_id}"
        )


def mark_running(session: Session, run: Run, attempt: Attempt, status: JobStatus, now: float) -> None:
    if attempt.state == AttemptState.PENDING:
        transition_attempt(session, attempt, AttemptState.RUNNING)
        attempt.start_time = ts(status.start_time or now)
    if status.deadline is not None and attempt.deadline is None:
        attempt.deadline = ts(status.deadline)
    if RunState(run.state) is RunState.QUEUED:
        transition_run(session, run, RunState.RUNNING, reason=f"attempt {attempt.number} started")


def set_attempt_state(session: Session, attempt: Attempt, state: AttemptState) -> None:
    transition_attempt(session, attempt, state)


def record_end(
    session: Session,
    attempt: Attempt,
    reason: EndReason,
    status: JobStatus,
    step_at_end: int,
    error: str | None,
    now: float,
) -> None:
    """The attempt ENDED: why, with its exit code, error, end time and the run's committed step."""
    transition_attempt(session, attempt, AttemptState.ENDED, reason=reason.value)
    attempt.end_reason = reason
    attempt.exit_code = status.exit_code
    attempt.error = error
    attempt.end_time = ts(status.end_time or now)
    attempt.step_at_end = step_at_end
    if attempt.start_time is None and status.start_time is not None:
        attempt.start_time = ts(status.start_time)
    session.flush()  # sessions do not autoflush: the decision that follows queries the attempt chain


def finish_run(session: Session, run: Run, state: RunState, message: str) -> None:
    if state is RunState.FAILED:
        run.last_error = message
    run.next_submit_at = None
    transition_run(session, run, state, reason=message)


def requeue_run(session: Session, run: Run, not_before: float | None, message: str) -> None:
    run.next_submit_at = ts(not_before)
    if RunState(run.state) is not RunState.QUEUED:
        transition_run(session, run, RunState.QUEUED, reason=message)


def record_event(
    session: Session, run: Run, kind: str, message: str, data: dict[str, Any] | None = None
) -> None:
    record_run_event(session, run, kind=kind, message=message, data=data)
