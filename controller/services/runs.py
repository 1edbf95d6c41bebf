"""Run operations: create, read, list, cancel, resume, ask the worker to act. The caller commits.

Cancel contract (with the reconciler): ``cancel_run`` sets ``run.cancel_requested`` and logs it.
A run without an attempt the scheduler owns is CANCELLED at once; otherwise the reconciler
cancels the job (SIGTERM: the worker saves and stops) and ends the run CANCELLED once the
attempt has ended. Until then the worker's next report is answered ``stop``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run
from controller.services import secrets
from controller.services.errors import Conflict, InvalidSpec, InvalidTransition, RunNotFound
from controller.settings import Settings
from controller.state_machine import record_run_event, transition_run
from shared.events import REQUESTABLE_ACTIONS, WorkerAction
from shared.names import validate_run_name
from shared.run_rules import RuleViolation, check_run
from shared.schemas import RunCreate
from shared.states import ACTIVE_ATTEMPT_STATES, RESUMABLE_RUN_STATES, RunState


def create_run(session: Session, body: RunCreate, *, settings: Settings | None = None) -> Run:
    """Store a new PENDING run.

    With ``settings`` (every caller that serves users: the API, the dashboard), the controller's
    rules are checked first (``shared.run_rules.check_run``: ``InvalidSpec`` names the field) and
    the secret environment values are written to the run's 0600 file; the stored spec keeps only
    their names (``controller.services.secrets``). Without, the body's own hard rules apply and it
    may hold no secret value (there is nowhere to keep one).
    """
    if settings is not None:
        try:
            check_run(body, settings.run_policy())
        except RuleViolation as exc:
            raise InvalidSpec(str(exc), field=exc.field) from None
    spec, secret_values = secrets.split(body)
    if secret_values and settings is None:
        raise ValueError("a run with secret environment values needs the controller's settings")
    if session.scalar(select(Run.id).where(Run.name == body.name)) is not None:
        raise Conflict(f"a run named {body.name!r} already exists", field="name")
    run = Run(
        name=body.name,
        state=RunState.PENDING,
        spec=spec,
        scheduler=body.resources.scheduler,
        training_steps=body.training.training_steps,
        current_step=0,
        tokens_seen=0,
        attempts_count=0,
        resumed_after_attempt=0,
        pending_action=WorkerAction.NONE,
        cancel_requested=False,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError as exc:  # a concurrent create with the same name
        raise Conflict(f"a run named {body.name!r} already exists", field="name") from exc
    if settings is not None:
        secrets.write_secrets(settings.data_dir, run.id, secret_values)
    record_run_event(
        session, run, kind="created", message=f"run {run.name} created", data={"state": "PENDING"}
    )
    return run


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def _resolve(session: Session, run: Run | int) -> Run:
    return run if isinstance(run, Run) else get_run(session, run)


def _valid_name(name: str) -> bool:
    try:
        validate_run_name(name)
    except ValueError:
        return False
    return True


def list_runs(
    session: Session,
    *,
    state: RunState | None = None,
    name: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Run], int]:
    """One page of runs, newest first, and how many match in total."""
    if name is not None and not _valid_name(name):
        # No run can have it; and the database never sees it (PostgreSQL refuses NUL bytes in text).
        return [], 0
    query = select(Run)
    count = select(func.count()).select_from(Run)
    if state is not None:
        query, count = query.where(Run.state == state), count.where(Run.state == state)
    if name is not None:
        query, count = query.where(Run.name == name), count.where(Run.name == name)
    rows = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return rows, int(session.scalar(count) or 0)


def cancel_run(session: Session, run: Run | int) -> Run:
    run = _resolve(session, run)
    state = RunState(run.state)
    if state.terminal:
        raise InvalidTransition(f"run {run.id} is already {state}; only an active run can be cancelled")
    if run.cancel_requested:
        return run
    run.cancel_requested = True
    record_run_event(session, run, kind="cancel_requested", message="cancel requested by the user")
    active = session.scalar(
        select(Attempt.id).where(Attempt.run_id == run.id, Attempt.state.in_(ACTIVE_ATTEMPT_STATES)).limit(1)
    )
    if active is None:
        run.next_submit_at = None
        transition_run(session, run, RunState.CANCELLED, reason="cancelled by the user (no job was running)")
    return run


def resume_run(session: Session, run: Run | int) -> Run:
    """FAILED or CANCELLED → PENDING: the reconciler submits an attempt that resumes from the latest
    committed checkpoint. The failure budget starts afresh: it counts only attempts after this one."""
    run = _resolve(session, run)
    state = RunState(run.state)
    if state not in RESUMABLE_RUN_STATES:
        raise InvalidTransition(f"run {run.id} is {state}; only a FAILED or CANCELLED run can be resumed")
    run.cancel_requested = False
    run.resumed_after_attempt = int(
        session.scalar(select(func.max(Attempt.number)).where(Attempt.run_id == run.id)) or 0
    )
    run.next_submit_at = None
    run.pending_action = WorkerAction.NONE
    transition_run(session, run, RunState.PENDING, reason="resumed by the user")
    return run


def request_action(session: Session, run: Run | int, action: WorkerAction) -> Run:
    """Ask the run's worker to checkpoint now or stop gracefully (delivered in its next report reply)."""
    if action not in REQUESTABLE_ACTIONS:
        raise ValueError(f"action must be one of {sorted(a.value for a in REQUESTABLE_ACTIONS)}")
    run = _resolve(session, run)
    if RunState(run.state) is not RunState.RUNNING:
        raise InvalidTransition(f"run {run.id} is {run.state}; a {action} request needs a RUNNING run")
    run.pending_action = action
    record_run_event(session, run, kind="action_requested", message=f"{action.value} requested by the user")
    return run


def list_attempts(session: Session, run_id: int) -> Sequence[Attempt]:
    get_run(session, run_id)
    return session.scalars(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.number)).all()


def list_checkpoints(
    session: Session, run_id: int, *, limit: int, offset: int
) -> tuple[Sequence[Checkpoint], int]:
    get_run(session, run_id)
    base = select(Checkpoint).where(Checkpoint.run_id == run_id)
    rows = session.scalars(base.order_by(Checkpoint.step).limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == run_id))
    return rows, int(total or 0)


def list_events(session: Session, run_id: int, *, limit: int, offset: int) -> tuple[Sequence[Event], int]:
    get_run(session, run_id)
    rows = session.scalars(
        select(Event).where(Event.run_id == run_id).order_by(Event.id).limit(limit).offset(offset)
    ).all()
    total = session.scalar(select(func.count()).select_from(Event).where(Event.run_id == run_id))
    return rows, int(total or 0)


def list_metrics(session: Session, run_id: int) -> Sequence[Metric]:
    """The run's whole metric series in step order (callers downsample or page it)."""
    get_run(session, run_id)
    return session.scalars(
        select(Metric).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id)
    ).all()
