"""Dependencies: the DB session (``SessionDep``), settings, who is calling, and the run a route is
about, already checked against the caller (``ReadableRun``, ``ActionableRun``, ``ShareableRun``:
404 for a run the caller may not read, 403 for one they may read but not act on). Authentication
runs before the body is validated: no token is 401, never 422."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controller import access
from controller.auth import Principal, authenticate, require_admin, require_user
from controller.db.models import Run
from controller.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit what they change, anything else is rolled back."""
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
MAX_ID = 2**31 - 1
"""Ids are 32-bit on PostgreSQL: every id in a URL is bounded by this, so a larger one is a 422,
never a database error."""
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="The run's id.")]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="The token's id (`pyrecover token list`).")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# Declares the bearer scheme in the OpenAPI document (clients and fuzzers learn that a token is
# needed); the header itself is parsed, strictly, by ``controller.auth.bearer_token``.
bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A user token (`pyrecover token create`) or, for reports only, the run's worker token.",
)


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    return authenticate(session, settings, authorization, method=request.method)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_user(principal: PrincipalDep) -> Principal:
    return require_user(principal)


UserDep = Annotated[Principal, Depends(get_user)]


def get_admin(principal: PrincipalDep) -> Principal:
    return require_admin(principal)


AdminDep = Annotated[Principal, Depends(get_admin)]


def get_creator(principal: UserDep) -> Principal:
    return access.require_creator(principal)


CreatorDep = Annotated[Principal, Depends(get_creator)]


def readable_run(run_id: RunId, session: SessionDep, principal: UserDep) -> Run:
    return access.readable_run(session, principal, run_id)


def actionable_run(run_id: RunId, session: SessionDep, principal: UserDep) -> Run:
    return access.actionable_run(session, principal, run_id)


def shareable_run(run_id: RunId, session: SessionDep, principal: UserDep) -> Run:
    return access.shareable_run(session, principal, run_id)


ReadableRun = Annotated[Run, Depends(readable_run)]
ActionableRun = Annotated[Run, Depends(actionable_run)]
ShareableRun = Annotated[Run, Depends(shareable_run)]
