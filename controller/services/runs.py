"""Run operations: create, read, list, cancel, resume, ask the worker to act. The caller commits.

Who may call them is decided before (``controller/access.py``); these functions record who did
(``by``, the actor's name) in the run's events: "cancel requested by alice". Creating or resuming a
run counts against its owner's active-run limit (``controller.services.users.check_quota``).

Cancel contract (with the reconciler): ``cancel_run`` sets ``run.cancel_requested`` and logs it.
A run without an attempt the scheduler owns is CANCELLED at once; otherwise the reconciler
cancels the job (SIGTERM: the worker saves and stops) and ends the run CANCELLED once the
attempt has ended. Until then the worker's next report is answered ``stop``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, User
from controller.notify.targets import UnsafeTarget, check_run_targets
from controller.services import secrets
from controller.services.errors import Conflict, InvalidField, InvalidTransition, RunNotFound
from controller.services.input_checks import check_inputs
from controller.services.users import check_quota
from controller.settings import Settings
from controller.state_machine import record_run_event, transition_run
from shared.events import REQUESTABLE_ACTIONS, WorkerAction
from shared.memory_plan import check_run as check_memory
from shared.names import validate_run_name
from shared.run_rules import RuleViolation
from shared.run_rules import check_run as check_rules
from shared.schemas import RunCreate
from shared.states import ACTIVE_ATTEMPT_STATES, RESUMABLE_RUN_STATES, RunState


def _taken(name: str) -> str:
    return (
        f"a run named {name!r} already exists: pick another name, or look at that run "
        f"(`pyrecover show {name}`; `pyrecover extend {name}` trains it further)"
    )


def create_run(
    session: Session, body: RunCreate, *, owner: User, by: str | None = None, settings: Settings | None = None
) -> Run:
    """Store a new PENDING run owned by ``owner`` (``by``: who asked, when not the owner themselves).

    With ``settings`` (every caller that serves users: the API, the dashboard), the controller's
    rules are checked first (``shared.run_rules.check_run``, then the webhook targets:
    ``InvalidField`` names the field) and the secret environment values are written to the run's
    0600 file; the stored spec keeps only their names (``controller.services.secrets``). Without,
    the body's own hard rules apply and it may hold no secret value (there is nowhere to keep one).
    A run that names its GPU must fit it by the memory plan (``shared.memory_plan.check_run``; runs
    naming no GPU are not checked): else ``InvalidField`` on ``training``, saying what to change.
    """
    if settings is not None:
        try:
            check_rules(body, settings.run_policy())
        except RuleViolation as exc:
            raise InvalidField(str(exc), field=exc.field) from None
    verdict = check_memory(body)
    if verdict is not None and not verdict.fits:
        raise InvalidField(verdict.refusal(), field="training")
    if settings is not None:
        check_inputs(body, settings)
        try:
            check_run_targets(body.policy.notify, settings)
        except UnsafeTarget as exc:
            field, _, message = str(exc).partition(": ")
            raise InvalidField(message, field=field) from None
    spec, secret_values = secrets.split(body)
    if secret_values and settings is None:
        raise ValueError("a run with secret environment values needs the controller's settings")
    if session.scalar(select(Run.id).where(Run.name == body.name)) is not None:
        raise Conflict(_taken(body.name), field="name")
    check_quota(session, owner)
    run = Run(
        name=body.name,
        owner_id=owner.id,
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
        raise Conflict(_taken(body.name), field="name") from exc
    if settings is not None:
        secrets.write_secrets(settings.data_dir, run.id, secret_values)
    actor = by or owner.name
    record_run_event(
        session,
        run,
        kind="created",
        message=f"run {run.name} created by {actor}",
        data={"state": "PENDING", "owner": owner.name, "by": actor},
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
    visible: ColumnElement[bool] | None = None,
) -> tuple[Sequence[Run], int]:
    """One page of runs, newest first, and how many match in total; ``visible`` restricts both to the
    runs the caller may read (``controller.access.visible_runs``; ``None``: all)."""
    if name is not None and not _valid_name(name):
        # No run can have it; and the database never sees it (PostgreSQL refuses NUL bytes in text).
        return [], 0
    query = select(Run)
    count = select(func.count()).select_from(Run)
    if visible is not None:
        query, count = query.where(visible), count.where(visible)
    if state is not None:
        query, count = query.where(Run.state == state), count.where(Run.state == state)
    if name is not None:
        query, count = query.where(Run.name == name), count.where(Run.name == name)
    rows = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return rows, int(session.scalar(count) or 0)


def cancel_run(session: Session, run: Run | int, *, by: str) -> Run:
    run = _resolve(session, run)
    state = RunState(run.state)
    if state.terminal:
        raise InvalidTransition(f"run {run.id} is already {state}; only an active run can be cancelled")
    if run.cancel_requested:
        return run
    run.cancel_requested = True
    record_run_event(
        session, run, kind="cancel_requested", message=f"cancel requested by {by}", data={"by": by}
    )
    active = session.scalar(
        select(Attempt.id).where(Attempt.run_id == run.id, Attempt.state.in_(ACTIVE_ATTEMPT_STATES)).limit(1)
    )
    if active is None:
        run.next_submit_at = None
        transition_run(
            session,
            run,
            RunState.CANCELLED,
            reason=f"cancelled by {by} (no job was running)",
            data={"by": by},
        )
    return run


def resume_run(session: Session, run: Run | int, *, by: str) -> Run:
    """FAILED or CANCELLED → PENDING: the reconciler submits an attempt that resumes from the latest
    committed checkpoint. The failure budget starts afresh: it counts only attempts after this one.
    The run becomes active again, so it counts against its owner's limit."""
    run = _resolve(session, run)
    state = RunState(run.state)
    if state not in RESUMABLE_RUN_STATES:
        raise InvalidTransition(f"run {run.id} is {state}; only a FAILED or CANCELLED run can be resumed")
    owner = session.get(User, run.owner_id)
    if owner is not None:
        check_quota(session, owner)
    run.cancel_requested = False
    run.resumed_after_attempt = int(
        session.scalar(select(func.max(Attempt.number)).where(Attempt.run_id == run.id)) or 0
    )
    run.next_submit_at = None
    run.pending_action = WorkerAction.NONE
    transition_run(session, run, RunState.PENDING, reason=f"resumed by {by}", data={"by": by})
    return run


def request_action(session: Session, run: Run | int, action: WorkerAction, *, by: str) -> Run:
    """Ask the run's worker to checkpoint now or stop gracefully (delivered in its next report reply)."""
    if action not in REQUESTABLE_ACTIONS:
        raise ValueError(f"action must be one of {sorted(a.value for a in REQUESTABLE_ACTIONS)}")
    run = _resolve(session, run)
    if RunState(run.state) is not RunState.RUNNING:
        raise InvalidTransition(f"run {run.id} is {run.state}; a {action} request needs a RUNNING run")
    run.pending_action = action
    record_run_event(
        session,
        run,
        kind="action_requested",
        message=f"{action.value} requested by {by}",
        data={"action": action.value, "by": by},
    )
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
