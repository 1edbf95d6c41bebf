"""Who is calling: bearer tokens → a ``Principal``, and the rules of what each kind may do.

* ``user`` tokens may call every user endpoint (and post reports, e.g. to replay a spool).
* ``worker`` tokens may only ``POST /runs/{id}/reports`` for their own run: 403 anywhere else.
* A missing, malformed, unknown, expired or revoked token is 401 when a token is needed; the
  message says which (only someone holding the token learns that it expired or was revoked).
* ``auth_required`` off (loopback only, see ``Settings.validate_for_serving``): no token needed,
  but a token that *is* sent is still checked. ``open_read_only``: GETs without a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from controller.services.tokens import check_token
from controller.settings import Settings

MAX_TOKEN_CHARS = 512
"""Ours are ~50 characters; anything much longer is not worth hashing."""


class AuthError(Exception):
    """``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: Literal[401, 403], message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "worker", "anonymous"]
    name: str
    run_id: int | None = None
    read_only: bool = False
    token_id: int | None = None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` without a header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
        raise AuthError(401, "the Authorization header must be 'Bearer <token>'")
    return token


def authenticate(
    session: Session, settings: Settings, authorization: str | None, *, method: str
) -> Principal:
    token = bearer_token(authorization)
    if token is not None:
        check = check_token(session, token)
        row = check.row
        if row is None:
            raise AuthError(401, _refusal(check.problem, check.expired_at))
        if row.kind == "worker":
            return Principal(kind="worker", name=row.name, run_id=row.run_id, token_id=row.id)
        return Principal(kind="user", name=row.name, token_id=row.id)
    if not settings.auth_required:
        return Principal(kind="anonymous", name="anonymous")
    if settings.open_read_only and method in ("GET", "HEAD"):
        return Principal(kind="anonymous", name="anonymous", read_only=True)
    raise AuthError(401, "a bearer token is required (create one with `pyrecover token create --name NAME`)")


def _refusal(problem: str | None, expired_at: datetime | None) -> str:
    if problem == "expired" and expired_at is not None:
        when = expired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"token expired at {when}: create a new one with `pyrecover token create --name NAME`"
    if problem == "revoked":
        return "token revoked: create a new one with `pyrecover token create --name NAME`"
    return "invalid token: this controller does not know it"


def require_user(principal: Principal) -> Principal:
    if principal.kind == "worker":
        raise AuthError(403, "a worker token may only post reports for its own run")
    return principal


def require_reporter(principal: Principal, run_id: int) -> Principal:
    if principal.kind == "worker" and principal.run_id != run_id:
        raise AuthError(403, f"this worker token belongs to run {principal.run_id}, not run {run_id}")
    if principal.read_only:
        raise AuthError(401, "a bearer token is required to post reports")
    return principal
