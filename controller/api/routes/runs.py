"""User endpoints on runs. Thin: check the caller (``controller/api/deps.py``, rules in
``controller/access.py``), validate (pydantic), call a service, commit, present."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from controller import access
from controller.api.deps import (
    ActionableRun,
    AdminDep,
    CreatorDep,
    ReadableRun,
    SessionDep,
    SettingsDep,
    UserDep,
)
from controller.api.presenters import attempt_public, downsample_indices, runs_public
from controller.auth import Principal
from controller.db.models import Run, User
from controller.db.types import utcnow
from controller.services import (
    cancel_run,
    create_run,
    first_admin,
    list_attempts,
    list_checkpoints,
    list_events,
    list_metrics,
    list_runs,
    request_action,
    resume_run,
    update_run,
)
from controller.services.exclusions import active_exclusions, clear_exclusions
from shared.schemas import (
    AttemptPublic,
    CheckpointPublic,
    EventPublic,
    ExclusionPublic,
    MetricPoint,
    Page,
    RunAction,
    RunCreate,
    RunPublic,
)
from shared.schemas.patch import RunPatch
from shared.states import RunState

router = APIRouter(prefix="/runs", tags=["runs"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "A worker token on a user endpoint, or a role that may not do this"},
}
RUN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"description": "No such run, or one the caller may not read"},
}
QUOTA: dict[int | str, dict[str, Any]] = {429: {"description": "The owner's active-run limit is reached"}}


def _wake(request: Request) -> None:
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None:
        reconciler.wake()


def _one(session: SessionDep, run: Run) -> RunPublic:
    return runs_public(session, [run], now=utcnow())[0]


def owner_of_new_run(session: SessionDep, principal: Principal) -> User:
    """The caller's user; with auth off, the first admin (created on a database without users)."""
    if principal.user_id is not None:
        user = session.get(User, principal.user_id)
        if user is not None:
            return user
    return first_admin(session)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, **QUOTA, 409: {"description": "Name taken"}, 422: {"description": "Invalid field"}},
)
def post_run(
    body: RunCreate, session: SessionDep, principal: CreatorDep, settings: SettingsDep, request: Request
) -> RunPublic:
    """Create a run owned by the caller; the reconciler submits its first attempt. Beyond the schema,
    the cross-field rules (``lr_warmup_steps <= training_steps``, ``batch_size`` divisible by nodes ×
    ntasks_per_node, ``async_checkpoint`` needs ``use_torch_distributed_ckpt``, ``profile_step_start
    <= profile_step_end``, ``checkpoint_frequency`` not 0, ``policy.min_nodes <= resources.nodes``)
    and this controller's rules (allow-lists, path roots, webhook targets, the memory plan) are 422s
    naming the field."""
    run = create_run(
        session, body, owner=owner_of_new_run(session, principal), by=principal.actor, settings=settings
    )
    session.commit()
    _wake(request)
    return _one(session, run)


@router.get("", responses=ERRORS)
def get_runs(
    session: SessionDep,
    principal: UserDep,
    state: Annotated[RunState | None, Query(description="Only runs in this state.")] = None,
    name: Annotated[str | None, Query(max_length=63, description="Only the run with this name.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[RunPublic]:
    """The runs the caller may read, newest first."""
    rows, total = list_runs(
        session, state=state, name=name, limit=limit, offset=offset, visible=access.visible_runs(principal)
    )
    return Page[RunPublic](
        items=runs_public(session, rows, now=utcnow()), total=total, limit=limit, offset=offset
    )


@router.get("/{run_id}", responses=RUN_ERRORS)
def get_one(run: ReadableRun, session: SessionDep) -> RunPublic:
    return _one(session, run)


@router.post("/{run_id}/cancel", responses={**RUN_ERRORS, 409: {"description": "Already ended"}})
def post_cancel(run: ActionableRun, session: SessionDep, principal: UserDep, request: Request) -> RunPublic:
    """Cancel the live attempt (the reconciler stops the job) and end the run CANCELLED."""
    cancel_run(session, run, by=principal.actor)
    session.commit()
    _wake(request)
    return _one(session, run)


@router.post(
    "/{run_id}/resume", responses={**RUN_ERRORS, **QUOTA, 409: {"description": "Not FAILED/CANCELLED"}}
)
def post_resume(run: ActionableRun, session: SessionDep, principal: UserDep, request: Request) -> RunPublic:
    """Restart a FAILED or CANCELLED run from its latest committed checkpoint."""
    resume_run(session, run, by=principal.actor)
    session.commit()
    _wake(request)
    return _one(session, run)


@router.patch(
    "/{run_id}",
    responses={
        **RUN_ERRORS,
        **QUOTA,
        409: {"description": "A COMPLETED run given no more steps"},
        422: {"description": "A field that may not change, or an invalid value"},
    },
)
def patch_run(
    body: RunPatch, run: ActionableRun, session: SessionDep, principal: UserDep, request: Request
) -> RunPublic:
    """Change settings that may change between attempts (``pyrecover extend``): more
    ``training_steps`` — a COMPLETED run then continues from its final checkpoint —, another
    learning rate, checkpoint cadence, policy... The next attempt uses them."""
    update_run(session, run, body, by=principal.actor)
    session.commit()
    _wake(request)
    return _one(session, run)


@router.post("/{run_id}/actions", responses={**RUN_ERRORS, 409: {"description": "Run not RUNNING"}})
def post_action(body: RunAction, run: ActionableRun, session: SessionDep, principal: UserDep) -> RunPublic:
    """Ask the worker to checkpoint now or stop gracefully (delivered with its next report reply)."""
    request_action(session, run, body.action, by=principal.actor)
    session.commit()
    return _one(session, run)


@router.get("/{run_id}/jobs", responses=RUN_ERRORS)
def get_jobs(run: ReadableRun, session: SessionDep) -> Page[AttemptPublic]:
    """The attempt chain, oldest first."""
    now = utcnow()
    items = [attempt_public(a, now=now) for a in list_attempts(session, run.id)]
    return Page[AttemptPublic](items=items, total=len(items), limit=len(items), offset=0)


@router.get("/{run_id}/checkpoints", responses=RUN_ERRORS)
def get_checkpoints(
    run: ReadableRun, session: SessionDep, limit: Limit = 100, offset: Offset = 0
) -> Page[CheckpointPublic]:
    rows, total = list_checkpoints(session, run.id, limit=limit, offset=offset)
    items = [CheckpointPublic.model_validate(c) for c in rows]
    return Page[CheckpointPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{run_id}/metrics", responses=RUN_ERRORS)
def get_metrics(
    run: ReadableRun,
    session: SessionDep,
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="Downsample the series to at most this many points.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    offset: Offset = 0,
) -> Page[MetricPoint]:
    """The metric series in step order across attempts; ``max_points`` thins it evenly (first and
    last point kept), then ``limit``/``offset`` page it."""
    rows = list_metrics(session, run.id)
    if max_points is not None:
        rows = [rows[i] for i in downsample_indices(len(rows), max_points)]
    page = rows[offset : offset + limit]
    items = [MetricPoint.model_validate(m) for m in page]
    return Page[MetricPoint](items=items, total=len(rows), limit=limit, offset=offset)


@router.get("/{run_id}/events", responses=RUN_ERRORS)
def get_events(
    run: ReadableRun, session: SessionDep, limit: Limit = 100, offset: Offset = 0
) -> Page[EventPublic]:
    """The run's event log, oldest first (every state transition is one, and every user action,
    with who did it)."""
    rows, total = list_events(session, run.id, limit=limit, offset=offset)
    items = [EventPublic.model_validate(e) for e in rows]
    return Page[EventPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{run_id}/exclusions", responses=RUN_ERRORS)
def get_exclusions(run: ReadableRun, session: SessionDep) -> list[ExclusionPublic]:
    """The hosts the run's next attempts exclude (after a node failure, a hang naming the host or a
    device fault), with when each entry expires; expired entries are not listed."""
    return [ExclusionPublic.model_validate(e) for e in active_exclusions(session, run.id, now=utcnow())]


@router.delete("/{run_id}/exclusions", responses=RUN_ERRORS)
def delete_exclusions(run: ReadableRun, session: SessionDep, principal: AdminDep) -> list[ExclusionPublic]:
    """Admins only: clear the run's exclusion list (the hosts were repaired); returns the empty list."""
    clear_exclusions(session, run, by=principal.actor)
    session.commit()
    return []
