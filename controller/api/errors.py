"""Domain errors → HTTP, at the edge only; 422 bodies name each rejected field."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controller.auth import AuthError
from controller.db.migrate import DatabaseNotMigrated
from controller.services.errors import AttemptNotFound, Conflict, InvalidTransition, RunNotFound

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


_EVENT_TAGS = frozenset(
    {"started", "progress", "checkpoint_committed", "stopping", "finished", "failed", "warning"}
)


def _clean(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_body(errors: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    detail = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
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


def _json(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The default body echoes the rejected input; ours names fields and messages only.
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(RunNotFound)
    async def _not_found(_: Request, exc: RunNotFound) -> JSONResponse:
        return _json(404, str(exc), field="run_id")

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

    @app.exception_handler(DatabaseNotMigrated)
    async def _unmigrated(_: Request, exc: DatabaseNotMigrated) -> JSONResponse:
        return _json(503, str(exc))
