"""Who is calling: bearer tokens → a ``Principal`` (user, role, worker scope); what each run may see
and do is ``controller/access.py``.

* A user token acts as its user, with the user's role (``shared.roles``), read fresh from the
  database on every request: a changed role or a revoked token takes effect at once.
* ``worker`` tokens may only ``POST /runs/{id}/reports`` for their own run: 403 anywhere else.
  Reports take nothing but the run's worker token (a user token is 403 there).
* A missing, malformed, unknown, expired or revoked token is 401 when a token is needed; the
  message says which (only someone holding the token learns that it expired or was revoked).
* ``auth_required`` off (``pyrecover serve --insecure-no-auth``, loopback only): no token needed;
  the caller acts as an admin named ``anonymous``. A token that *is* sent is still checked.
  ``open_read_only``: GETs without a token read every run, and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from controller.db.models import User
from controller.services.tokens import check_token
from controller.settings import Settings
from shared.roles import ALL_RUNS_ROLES, RUN_CREATING_ROLES, Role

MAX_TOKEN_CHARS = 512
"""Ours are ~50 characters; anything much longer is not worth hashing."""
ANONYMOUS = "anonymous"


class AuthError(Exception):
    """``status`` is 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: Literal[401, 403], message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The caller of one request, as every access rule sees it."""

    kind: Literal["user", "worker", "anonymous"]
    name: str
    """The user's name; ``worker run N`` for a worker; ``anonymous``."""
    role: Role | None = None
    """The user's role; ``None`` for a worker."""
    user_id: int | None = None
    run_id: int | None = None
    """A worker token's run."""
    read_only: bool = False
    """Open read-only mode: a GET without a token."""
    reads_all: bool = False
    """May read every run (an admin, ``users_read_all_runs``, open read-only)."""
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ALL_RUNS_ROLES and not self.read_only

    @property
    def may_create_runs(self) -> bool:
        return self.kind != "worker" and self.role in RUN_CREATING_ROLES and not self.read_only

    @property
    def actor(self) -> str:
        """How events name this caller: "cancel requested by alice"."""
        return f"{ANONYMOUS} (auth off)" if self.kind == "anonymous" else self.name


def user_principal(user: User, settings: Settings, *, token_id: int | None = None) -> Principal:
    role = Role(user.role)
    return Principal(
        kind="user",
        name=user.name,
        role=role,
        user_id=user.id,
        token_id=token_id,
        reads_all=role in ALL_RUNS_ROLES or settings.users_read_all_runs,
    )


def no_auth_principal() -> Principal:
    """The caller when auth is off: anyone who reaches the (loopback) port may do anything."""
    return Principal(kind="anonymous", name=ANONYMOUS, role=Role.ADMIN, reads_all=True)


def open_read_principal() -> Principal:
    return Principal(kind="anonymous", name=ANONYMOUS, role=Role.VIEWER, read_only=True, reads_all=True)


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
        user = session.get(User, row.user_id) if row.user_id is not None else None
        if user is None:  # a user token of no user: only a hand-edited database has one
            raise AuthError(401, _refusal("unknown", None))
        return user_principal(user, settings, token_id=row.id)
    if not settings.auth_required:
        return no_auth_principal()
    if settings.open_read_only and method in ("GET", "HEAD"):
        return open_read_principal()
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


def require_admin(principal: Principal) -> Principal:
    require_user(principal)
    if principal.read_only:
        raise AuthError(401, "a bearer token is required (an admin's)")
    if not principal.is_admin:
        raise AuthError(403, "only an admin may manage users and tokens")
    return principal


def require_reporter(principal: Principal, run_id: int) -> Principal:
    """Only the run's own worker token may post its reports."""
    if principal.read_only:
        raise AuthError(401, "a bearer token is required to post reports")
    if principal.kind != "worker":
        raise AuthError(403, "only the run's worker token may post reports")
    if principal.run_id != run_id:
        raise AuthError(403, f"this worker token belongs to run {principal.run_id}, not run {run_id}")
    return principal
