"""``POST /runs/{id}/reports``: the worker's batch of events (run-scoped worker token)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError

from controller.api.deps import PrincipalDep, SessionDep
from controller.auth import require_reporter
from controller.services import ingest
from shared.schemas import ReportBatch, ReportReply

router = APIRouter(prefix="/runs", tags=["worker"])


@router.post(
    "/{run_id}/reports",
    responses={
        401: {"description": "Missing or invalid token"},
        403: {"description": "A worker token of another run"},
        404: {"description": "No such run"},
        409: {"description": "No such attempt"},
    },
)
def post_reports(
    run_id: int, batch: ReportBatch, session: SessionDep, principal: PrincipalDep, request: Request
) -> ReportReply:
    """Store a batch of worker events; idempotent per (attempt, seq). The reply may ask the worker to
    checkpoint now or stop."""
    require_reporter(principal, run_id)
    started = time.perf_counter()
    try:
        result = ingest(session, run_id, batch)
        session.commit()
    except IntegrityError:
        # The same batch raced in twice (a retry while the first was in flight): the loser re-reads
        # and finds its events stored, so it answers "duplicates" like any later retry would.
        session.rollback()
        result = ingest(session, run_id, batch)
        session.commit()
    state = request.app.state
    state.report_latency.observe(time.perf_counter() - started)
    state.report_events["accepted"] += result.reply.accepted
    state.report_events["duplicates"] += result.reply.duplicates
    if result.wake_reconciler:
        reconciler = getattr(state, "reconciler", None)
        if reconciler is not None:
            reconciler.wake()
    return result.reply
