"""``POST /runs/{id}/reports``: the worker's batch of events (run-scoped worker token).

The hot path of the controller (every worker posts a batch every half second), so the route is
``async`` and hands all of its blocking work (authentication, ingest, commit) to the thread pool
in one call: FastAPI runs each sync dependency in a thread of its own, and under load every hop
waited for the GIL (a request took five hops before this). On SQLite the writes of this process
queue on ``app.state.report_write_lock``: SQLite takes one writer at a time, and a writer that
finds the database locked sleeps in its busy handler (1, 2, 5 ... up to 100 ms per try), so a dozen
report threads made a latency tail of that backoff, not of work (p99 1.5 s at 32 requests/s).
PostgreSQL locks rows, not the database: no lock there.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.api.deps import RunId, bearer_scheme
from controller.auth import Principal, authenticate, require_reporter
from controller.db.models import Run
from controller.services import IngestResult, RunNotFound, ingest, refresh_worker_token
from controller.services.claims import ClaimRefused, authorize_attempt, authorize_reporter, record_refusal
from controller.settings import Settings
from shared.schemas import ReportBatch, ReportReply

router = APIRouter(prefix="/runs", tags=["worker"])

# The body is read by the handler, after the token (a request without one is 401, never 422), so
# the document states it here: the schema is registered as a component by controller/api/openapi.py.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReportBatch"}}},
    }
}


@router.post(
    "/{run_id}/reports",
    openapi_extra=_BODY,
    responses={
        401: {"description": "Missing or invalid token"},
        403: {"description": "Not a worker token of this run, or of a later attempt than the token's"},
        404: {"description": "No such run"},
        409: {"description": "No such attempt"},
        413: {"description": "Body larger than the controller's max_request_bytes"},
        422: {
            "description": (
                "Invalid event (the field is named): a step past the run's training_steps, a checkpoint "
                "path outside the run's checkpoint directory (recorded as a security event) ..."
            )
        },
        429: {"description": "Too many reports for this run: retry after Retry-After seconds"},
        503: {"description": "The database is locked or unreachable: retry after Retry-After seconds"},
    },
)
async def post_reports(
    run_id: RunId,
    request: Request,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> ReportReply:
    """Store a batch of worker events (a ``ReportBatch``); idempotent per (attempt, seq). The reply
    may ask the worker to checkpoint now or stop. Only the run's worker token may post, for its
    own attempt or an earlier one; a report of an attempt that has ended is recorded but changes
    no state."""
    state = request.app.state
    body = await request.body()
    result: IngestResult = await run_in_threadpool(_store, state, run_id, body, authorization)
    state.report_events["accepted"] += result.reply.accepted
    state.report_events["duplicates"] += result.reply.duplicates
    if result.wake_reconciler:
        reconciler = getattr(state, "reconciler", None)
        if reconciler is not None:
            reconciler.wake()
    return result.reply


def _parse(body: bytes) -> ReportBatch:
    try:
        return ReportBatch.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def run_checkpoint_dir(settings: Settings, run: Run) -> Path:
    """``<checkpoint root>/<run name>``: where the run's worker writes ``step-<N>``."""
    return settings.resolve_checkpoint_dir(str(run.spec["training"]["checkpoint_dir"])) / run.name


def _store(state: Any, run_id: int, body: bytes, authorization: str | None) -> IngestResult:
    """Authenticate, rate-limit, check the claims, ingest and commit, in one session (thread pool)."""
    with state.session_factory() as session:
        principal = authenticate(session, state.settings, authorization, method="POST")
        require_reporter(principal, run_id)
        authorize_reporter(principal, run_id)
        batch = _parse(body)
        authorize_attempt(session, principal, run_id, batch.attempt)
        # After authentication: nobody can spend a run's budget without a token that may report for it.
        state.report_limiter.acquire(run_id)
        started = time.perf_counter()
        sqlite = session.get_bind().dialect.name == "sqlite"
        with state.report_write_lock if sqlite else nullcontext():
            try:
                result = _ingest(session, state.settings, run_id, batch, principal)
                session.commit()
            except IntegrityError:
                # The same batch raced in twice (a retry while the first was in flight): the loser
                # re-reads and finds its events stored, so it answers "duplicates" like any later retry.
                session.rollback()
                result = _ingest(session, state.settings, run_id, batch, principal)
                session.commit()
            except ClaimRefused as exc:
                session.rollback()  # nothing of the batch is stored ...
                run = session.get(Run, run_id)
                if run is not None:  # ... but the attempt to plant a path is
                    record_refusal(session, run, batch.attempt, exc)
                    session.commit()
                raise
    if result.reply.accepted == 0:
        state.report_limiter.refund(run_id)  # a replay of what is stored already: free
    state.report_latency.observe(time.perf_counter() - started)
    return result


def _ingest(
    session: Session, settings: Settings, run_id: int, batch: ReportBatch, principal: Principal
) -> IngestResult:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    result = ingest(session, run, batch, checkpoint_dir=run_checkpoint_dir(settings, run))
    if principal.kind == "worker" and principal.token_id is not None:
        refresh_worker_token(session, principal.token_id, run_id, batch.attempt)
    return result
