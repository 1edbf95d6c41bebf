"""``POST /runs/{id}/reports``: the worker's batch of events (run-scoped worker token)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.api.deps import PrincipalDep, RunId, SessionDep
from controller.auth import Principal, require_reporter
from controller.services import IngestResult, ingest, refresh_worker_token
from shared.schemas import ReportBatch, ReportReply

router = APIRouter(prefix="/runs", tags=["worker"])


@router.post(
    "/{run_id}/reports",
    responses={
        401: {"description": "Missing or invalid token"},
        403: {"description": "A worker token of another run"},
        404: {"description": "No such run"},
        409: {"description": "No such attempt"},
        413: {"description": "Body larger than the controller's max_request_bytes"},
        422: {"description": "Invalid event (the field is named)"},
        429: {"description": "Too many reports for this run: retry after Retry-After seconds"},
    },
)
def post_reports(
    run_id: RunId, batch: ReportBatch, session: SessionDep, principal: PrincipalDep, request: Request
) -> ReportReply:
    """Store a batch of worker events; idempotent per (attempt, seq). The reply may ask the worker to
    checkpoint now or stop."""
    require_reporter(principal, run_id)
    # After authentication: nobody can spend a run's budget without a token that may report for it.
    request.app.state.report_limiter.acquire(run_id)
    started = time.perf_counter()
    try:
        result = _ingest(session, run_id, batch, principal)
        session.commit()
    except IntegrityError:
        # The same batch raced in twice (a retry while the first was in flight): the loser re-reads
        # and finds its events stored, so it answers "duplicates" like any later retry would.
        session.rollback()
        result = _ingest(session, run_id, batch, principal)
        session.commit()
    state = request.app.state
    if result.reply.accepted == 0:
        state.report_limiter.refund(run_id)  # a replay of what is stored already: free
    state.report_latency.observe(time.perf_counter() - started)
    state.report_events["accepted"] += result.reply.accepted
    state.report_events["duplicates"] += result.reply.duplicates
    if result.wake_reconciler:
        reconciler = getattr(state, "reconciler", None)
        if reconciler is not None:
            reconciler.wake()
    return result.reply


def _ingest(session: Session, run_id: int, batch: ReportBatch, principal: Principal) -> IngestResult:
    result = ingest(session, run_id, batch)
    if principal.kind == "worker" and principal.token_id is not None:
        refresh_worker_token(session, principal.token_id, run_id, batch.attempt)
    return result
