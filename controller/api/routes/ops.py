"""Operations: ``/healthz`` (liveness + DB check, no token) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from controller import metrics
from controller.api.deps import SessionDep, UserDep
from controller.db.types import utcnow
from shared.schemas import Health

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, responses={503: {"description": "Database unreachable"}})
def healthz(session: SessionDep, request: Request) -> Health | JSONResponse:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return JSONResponse({"status": "error", "database": f"{type(exc).__name__}"}, status_code=503)
    running = getattr(request.app.state, "reconciler", None) is not None
    return Health(status="ok", database="ok", reconciler="running" if running else "off")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        401: {"description": "Missing, invalid, expired or revoked token"},
        403: {"description": "A worker token"},
    },
)
def prometheus(session: SessionDep, _user: UserDep, request: Request) -> PlainTextResponse:
    state = request.app.state
    body = metrics.render(session, state.report_latency, now=utcnow(), events=dict(state.report_events))
    return PlainTextResponse(body, media_type=metrics.CONTENT_TYPE)
