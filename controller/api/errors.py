"""Domain errors → HTTP, at the edge only; 422 bodies name each rejected field."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from controller.api.limits import RateLimited, retry_after_header
from controller.auth import AuthError
from controller.db.migrate import DatabaseNotMigrated
from controller.services.errors import (
    AttemptNotFound,
    Conflict,
    InvalidField,
    InvalidReport,
    InvalidTransition,
    NotShared,
    QuotaExceeded,
    ReportForbidden,
    RunNotFound,
    TokenNotFound,
    UserNotFound,
)
from shared.events import EventType
from shared.unknown_fields import error_loc

_LOC_PREFIXES = ("body", "query", "path", "header")


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "training", "training_steps")`` → ``"training.training_steps"``; tagged-union
    discriminators (``"events", 0, "progress", "loss"``) keep the list index and drop the tag."""
    parts = list(loc)
    if parts and parts[0] in _LOC_PREFIXES:
        where, parts = parts[0], parts[1:]
        if not parts:
            return "body" if where == "body" else where
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif out and out[-1].startswith("[") and part in _EVENT_TAGS:
            continue
        else:
            out.append(("." if out else "") + str(part))
    return "".join(out)


_EVENT_TAGS = frozenset(t.value for t in EventType)


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_body(errors: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    detail = []
    for err in errors:
        loc = error_loc(err)
        detail.append(
            {
                "loc": list(loc),
                "field": field_name(loc),
                "msg": _clean(str(err.get("msg", ""))),
                "type": err.get("type"),
            }
        )
    message = "; ".join(f"{d['field']}: {d['msg']}" for d in detail)
    return {"detail": detail, "message": message}


# FastAPI answers a body it cannot decode (not UTF-8) with this 400; the API promises 422 for bad
# input, so it becomes one, naming the body.
_UNPARSABLE_BODY = "There was an error parsing the body"


def _json(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The default body echoes the rejected input; ours names fields and messages only.
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
            error = {"loc": ("body",), "msg": "the body is not valid UTF-8 JSON", "type": "json_invalid"}
            return JSONResponse(validation_body([error]), status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(InvalidField)
    @app.exception_handler(InvalidReport)
    async def _invalid_field(_: Request, exc: InvalidReport | InvalidField) -> JSONResponse:
        loc = ["body", *exc.field.split(".")]
        detail = [{"loc": loc, "field": exc.field, "msg": str(exc), "type": "value_error"}]
        return JSONResponse({"detail": detail, "message": f"{exc.field}: {exc}"}, status_code=422)

    @app.exception_handler(ReportForbidden)
    async def _forbidden(_: Request, exc: ReportForbidden) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        headers = {"Retry-After": retry_after_header(exc.retry_after_s)}
        return JSONResponse({"detail": str(exc)}, status_code=429, headers=headers)

    @app.exception_handler(RunNotFound)
    async def _not_found(_: Request, exc: RunNotFound) -> JSONResponse:
        return _json(404, str(exc), field="run_id")

    @app.exception_handler(UserNotFound)
    async def _no_user(_: Request, exc: UserNotFound) -> JSONResponse:
        return _json(404, str(exc), field="user")

    @app.exception_handler(TokenNotFound)
    async def _no_token(_: Request, exc: TokenNotFound) -> JSONResponse:
        return _json(404, str(exc), field="token_id")

    @app.exception_handler(NotShared)
    async def _not_shared(_: Request, exc: NotShared) -> JSONResponse:
        return _json(404, str(exc), field="user")

    @app.exception_handler(QuotaExceeded)
    async def _quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
        # Retry-After: an active run ends on its own schedule, so only a hint to come back later.
        return JSONResponse(
            {"detail": str(exc), "field": "active_run_limit"}, status_code=429, headers={"Retry-After": "60"}
        )

    @app.exception_handler(InvalidTransition)
    async def _transition(_: Request, exc: InvalidTransition) -> JSONResponse:
        return _json(409, str(exc), field="state")

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _json(409, str(exc), field=exc.field)

    @app.exception_handler(AttemptNotFound)
    async def _attempt(_: Request, exc: AttemptNotFound) -> JSONResponse:
        return _json(409, str(exc), field="attempt")

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
        # The database is locked past its busy timeout or unreachable (a PostgreSQL restart): a
        # clean, retryable 503 instead of a bare 500. The transaction was rolled back; nothing
        # changed. The worker's reporter retries (and spools); users see what happened.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        return JSONResponse(
            {"detail": f"database unavailable, nothing was changed; retry shortly ({reason[:200]})"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(DatabaseNotMigrated)
    async def _unmigrated(_: Request, exc: DatabaseNotMigrated) -> JSONResponse:
        return _json(503, str(exc))
