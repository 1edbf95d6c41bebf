"""User endpoints on runs. Thin: validate (pydantic), call a service, commit, present."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from controller.api.deps import RunId, SessionDep, UserDep
from controller.api.presenters import attempt_public, downsample_indices, runs_public
from controller.db.types import utcnow
from controller.services import (
    cancel_run,
    create_run,
    get_run,
    list_attempts,
    list_checkpoints,
    list_events,
    list_metrics,
    list_runs,
    request_action,
    resume_run,
)
from shared.schemas import (
    AttemptPublic,
    CheckpointPublic,
    EventPublic,
    MetricPoint,
    Page,
    RunAction,
    RunCreate,
    RunPublic,
)
from shared.states import RunState

router = APIRouter(prefix="/runs", tags=["runs"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, invalid, expired or revoked token"},
    403: {"description": "A worker token on a user endpoint"},
}
RUN_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 404: {"description": "No such run"}}


def _wake(request: Request) -> None:
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None:
        reconciler.wake()


def _one(session: SessionDep, run_id: int) -> RunPublic:
    return runs_public(session, [get_run(session, run_id)], now=utcnow())[0]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={**ERRORS, 409: {"description": "Name taken"}, 422: {"description": "Invalid field"}},
)
def post_run(body: RunCreate, session: SessionDep, _user: UserDep, request: Request) -> RunPublic:
    """Create a run; the reconciler submits its first attempt. Beyond the schema, the cross-field
    rules (``lr_warmup_steps <= training_steps``, ``batch_size`` divisible by nodes × ntasks_per_node,
    ``async_checkpoint`` needs ``use_torch_distributed_ckpt``, ``profile_step_start <= profile_step_end``,
    ``checkpoint_frequency`` not 0) are 422s naming the field."""
    run = create_run(session, body, settings=request.app.state.settings)
    session.commit()
    _wake(request)
    return _one(session, run.id)


@router.get("", responses=ERRORS)
def get_runs(
    session: SessionDep,
    _user: UserDep,
    state: Annotated[RunState | None, Query(description="Only runs in this state.")] = None,
    name: Annotated[str | None, Query(max_length=63, description="Only the run with this name.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[RunPublic]:
    """Runs, newest first."""
    rows, total = list_runs(session, state=state, name=name, limit=limit, offset=offset)
    return Page[RunPublic](
        items=runs_public(session, rows, now=utcnow()), total=total, limit=limit, offset=offset
    )


@router.get("/{run_id}", responses=RUN_ERRORS)
def get_one(run_id: RunId, session: SessionDep, _user: UserDep) -> RunPublic:
    return _one(session, run_id)


@router.post("/{run_id}/cancel", responses={**RUN_ERRORS, 409: {"description": "Already ended"}})
def post_cancel(run_id: RunId, session: SessionDep, _user: UserDep, request: Request) -> RunPublic:
    """Cancel the live attempt (the reconciler stops the job) and end the run CANCELLED."""
    cancel_run(session, run_id)
    session.commit()
    _wake(request)
    return _one(session, run_id)


@router.post("/{run_id}/resume", responses={**RUN_ERRORS, 409: {"description": "Not FAILED/CANCELLED"}})
def post_resume(run_id: RunId, session: SessionDep, _user: UserDep, request: Request) -> RunPublic:
    """Restart a FAILED or CANCELLED run from its latest committed checkpoint."""
    resume_run(session, run_id)
    session.commit()
    _wake(request)
    return _one(session, run_id)


@router.post("/{run_id}/actions", responses={**RUN_ERRORS, 409: {"description": "Run not RUNNING"}})
def post_action(run_id: RunId, body: RunAction, session: SessionDep, _user: UserDep) -> RunPublic:
    """Ask the worker to checkpoint now or stop gracefully (delivered with its next report reply)."""
    request_action(session, run_id, body.action)
    session.commit()
    return _one(session, run_id)


@router.get("/{run_id}/jobs", responses=RUN_ERRORS)
def get_jobs(run_id: RunId, session: SessionDep, _user: UserDep) -> Page[AttemptPublic]:
    """The attempt chain, oldest first."""
    now = utcnow()
    items = [attempt_public(a, now=now) for a in list_attempts(session, run_id)]
    return Page[AttemptPublic](items=items, total=len(items), limit=len(items), offset=0)


@router.get("/{run_id}/checkpoints", responses=RUN_ERRORS)
def get_checkpoints(
    run_id: RunId, session: SessionDep, _user: UserDep, limit: Limit = 100, offset: Offset = 0
) -> Page[CheckpointPublic]:
    rows, total = list_checkpoints(session, run_id, limit=limit, offset=offset)
    items = [CheckpointPublic.model_validate(c) for c in rows]
    return Page[CheckpointPublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{run_id}/metrics", responses=RUN_ERRORS)
def get_metrics(
    run_id: RunId,
    session: SessionDep,
    _user: UserDep,
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="Downsample the series to at most this many points.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    offset: Offset = 0,
) -> Page[MetricPoint]:
    """The metric series in step order across attempts; ``max_points`` thins it evenly (first and
    last point kept), then ``limit``/``offset`` page it."""
    rows = list_metrics(session, run_id)
    if max_points is not None:
        rows = [rows[i] for i in downsample_indices(len(rows), max_points)]
    page = rows[offset : offset + limit]
    items = [MetricPoint.model_validate(m) for m in page]
    return Page[MetricPoint](items=items, total=len(rows), limit=limit, offset=offset)


@router.get("/{run_id}/events", responses=RUN_ERRORS)
def get_events(
    run_id: RunId, session: SessionDep, _user: UserDep, limit: Limit = 100, offset: Offset = 0
) -> Page[EventPublic]:
    """The run's event log, oldest first (every state transition is one)."""
    rows, total = list_events(session, run_id, limit=limit, offset=offset)
    items = [EventPublic.model_validate(e) for e in rows]
    return Page[EventPublic](items=items, total=total, limit=limit, offset=offset)
