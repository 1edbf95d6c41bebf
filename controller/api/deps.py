"""Dependencies: the DB session (``SessionDep``), settings, who is calling, the ``RunId`` path parameter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from controller.auth import Principal, authenticate, require_user
from controller.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit what they change, anything else is rolled back."""
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The run's id.")]
"""Bounded like the column (32-bit on PostgreSQL): a larger id is a 422, never a database error."""
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
