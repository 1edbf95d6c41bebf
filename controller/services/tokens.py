"""API tokens: user tokens (``pyrecover token create``), held by a user, and run-scoped worker tokens.

Only the SHA-256 of a token is stored; the plaintext is returned once. Lookup is by hash (a
unique index), and the stored hash is compared with ``hmac.compare_digest`` on top, so neither the
lookup nor the comparison depends on how much of a guessed token matches a real one.

Expiry:

* user tokens expire when created with a TTL (``pyrecover token create --expires-in 30d``);
* worker tokens always expire. At issue the attempt may still wait in the queue, so the token lives
  ``WORKER_QUEUE_ALLOWANCE_S`` + walltime + ``WORKER_GRACE_S``; each report of the running worker
  sets it to that moment + walltime + ``WORKER_GRACE_S`` (``refresh_worker_token``). A token
  copied out of a finished job's folder is useless an hour after the job's walltime.

Listing, revoking and rotating are for admins (``pyrecover token list|revoke|rotate`` and
``/api/v1/tokens``). Revoking a token also signs out every dashboard session opened with it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controller.db.models import ApiToken, Attempt, Run, User, WebSession
from controller.db.types import utcnow
from controller.services.errors import Conflict, TokenNotFound
from controller.services.users import ensure_user
from shared.roles import Role
from shared.schemas.access import MAX_TOKEN_TTL_S, TokenState
from shared.schemas.spec import parse_time_limit
from shared.states import ACTIVE_ATTEMPT_STATES

USER_PREFIX = "pyr_u_"
WORKER_PREFIX = "pyr_w_"
WORKER_QUEUE_ALLOWANCE_S = 7 * 86_400
"""How long an attempt may wait in the queue before its token dies unused."""
WORKER_GRACE_S = 3_600
"""After the walltime: the final save, the last reports, a spool replayed by the same process."""
REFRESH_STEP_S = 300
"""A worker token's expiry is rewritten only when it moves by more than this."""
MAX_TTL_S = MAX_TOKEN_TTL_S
_TTL_RE = re.compile(r"^(?P<n>\d+)(?P<u>[smhdw])$")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 7 * 86_400}

Problem = Literal["unknown", "revoked", "expired"]


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of looking a presented token up: ``row`` when valid, else what is wrong."""

    row: ApiToken | None
    problem: Problem | None = None
    expired_at: datetime | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def parse_ttl(text: str) -> int:
    """``"30d"`` → seconds. Units ``s m h d w``; at most ten years. ``ValueError`` says what is allowed."""
    m = _TTL_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a duration such as '90m', '12h', '30d' or '2w', got {text!r}")
    seconds = int(m["n"]) * _TTL_UNITS[m["u"]]
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError(f"the duration must be positive and at most ten years, got {text!r}")
    return seconds


def _new(
    session: Session,
    *,
    name: str,
    kind: str,
    prefix: str,
    run_id: int | None,
    ttl_s: float | None,
    user_id: int | None = None,
    attempt: int | None = None,
) -> tuple[str, ApiToken]:
    token = prefix + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=ttl_s) if ttl_s is not None else None
    row = ApiToken(
        name=name,
        token_hash=hash_token(token),
        prefix=token[: len(prefix) + 4],
        kind=kind,
        run_id=run_id,
        user_id=user_id,
        attempt=attempt,
        expires_at=expires,
        revoked=False,
    )
    session.add(row)
    return token, row


def issue_user_token(
    session: Session, user: User, *, label: str | None = None, ttl_s: float | None = None
) -> tuple[str, ApiToken]:
    """A new token for ``user`` (plaintext, shown once, and its row); ``ttl_s=None`` never expires.
    Caller commits."""
    if ttl_s is not None and not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError("ttl_s must be positive and at most ten years")
    token, row = _new(
        session,
        name=label or user.name,
        kind="user",
        prefix=USER_PREFIX,
        run_id=None,
        ttl_s=ttl_s,
        user_id=user.id,
    )
    session.flush()
    return token, row


def create_user_token(
    session: Session, name: str, *, ttl_s: float | None = None, role: Role | None = None
) -> str:
    """A new token for user ``name``, created (role ``user``, or ``role``) if missing; the first user
    of a database is an admin. Returns the plaintext, shown once. Caller commits."""
    user = ensure_user(session, name, role=role).user
    return issue_user_token(session, user, ttl_s=ttl_s)[0]


def walltime_s(run: Run) -> int:
    """The run's per-attempt walltime in seconds (its spec was validated when the run was created)."""
    return parse_time_limit(run.spec["resources"]["time_limit"])


def issue_worker_token(
    session: Session, run_id: int, *, attempt: int | None = None, ttl_s: float | None = None
) -> str:
    """A token that may only ``POST /runs/{run_id}/reports``, for ``attempt`` or an earlier one
    (``controller/services/claims.py``); it expires (see the module docstring). ``ttl_s`` overrides
    the default lifetime. Caller commits."""
    if ttl_s is None:
        run = session.get(Run, run_id)
        walltime = walltime_s(run) if run is not None else 0
        ttl_s = WORKER_QUEUE_ALLOWANCE_S + walltime + WORKER_GRACE_S
    name = f"worker run {run_id}" + (f" attempt {attempt}" if attempt is not None else "")
    return _new(
        session, name=name, kind="worker", prefix=WORKER_PREFIX, run_id=run_id, ttl_s=ttl_s, attempt=attempt
    )[0]


def refresh_worker_token(
    session: Session, token_id: int, run_id: int, attempt: int, *, now: datetime | None = None
) -> None:
    """A worker reported with its token: the token now expires ``now`` + walltime + grace.

    The first report shrinks the queue allowance away; later ones slide the expiry along, but only
    while the reporting attempt is live, so an admin's time-limit extension never locks a running
    worker out, and a token outliving its job dies ``WORKER_GRACE_S`` past the walltime. Written at
    most every ``REFRESH_STEP_S`` (both rows are in the session already). Caller commits."""
    row = session.get(ApiToken, token_id)
    run = session.get(Run, run_id)
    if row is None or run is None or row.kind != "worker":
        return
    target = (now or utcnow()) + timedelta(seconds=walltime_s(run) + WORKER_GRACE_S)
    current = row.expires_at
    if current is not None and abs((target - current).total_seconds()) < REFRESH_STEP_S:
        return
    if current is not None and target > current:
        live = session.scalar(
            select(Attempt.id).where(
                Attempt.run_id == run_id, Attempt.number == attempt, Attempt.state.in_(ACTIVE_ATTEMPT_STATES)
            )
        )
        if live is None:
            return
    row.expires_at = target


def check_token(session: Session, token: str, *, now: datetime | None = None) -> TokenCheck:
    """Look ``token`` up: the valid row, or why it is refused (unknown, revoked, expired)."""
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return TokenCheck(row=None, problem="unknown")
    if row.revoked:
        return TokenCheck(row=None, problem="revoked")
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return TokenCheck(row=None, problem="expired", expired_at=row.expires_at)
    return TokenCheck(row=row)


def authenticate_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken | None:
    """The valid (known, unrevoked, unexpired) token row for ``token``, else ``None``."""
    return check_token(session, token, now=now).row


def user_of_token(session: Session, token: str) -> tuple[ApiToken, User] | None:
    """A valid *user* token's row and its user (the dashboard's sign-in check); ``None`` otherwise."""
    row = authenticate_token(session, token)
    if row is None or row.kind != "user" or row.user_id is None:
        return None
    user = session.get(User, row.user_id)
    return None if user is None else (row, user)


def user_for_token(session: Session, token: str) -> str | None:
    """The name of the user a valid user token belongs to."""
    found = user_of_token(session, token)
    return found[1].name if found is not None else None


def token_state(row: ApiToken, *, now: datetime | None = None) -> TokenState:
    if row.revoked:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def list_user_tokens(session: Session, *, user: User | None = None) -> list[tuple[ApiToken, User]]:
    """Every user token (or ``user``'s) with its user, oldest first. Worker tokens are not listed:
    they live and die with their attempt."""
    query = select(ApiToken, User).join(User, ApiToken.user_id == User.id).where(ApiToken.kind == "user")
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return [(t, u) for t, u in session.execute(query.order_by(ApiToken.id))]


def get_user_token(session: Session, token_id: int) -> tuple[ApiToken, User]:
    row = session.get(ApiToken, token_id)
    user = session.get(User, row.user_id) if row is not None and row.user_id is not None else None
    if row is None or row.kind != "user" or user is None:
        raise TokenNotFound(token_id)
    return row, user


def revoke_token(session: Session, token_id: int) -> bool:
    """Revoke a token (idempotent) and end the dashboard sessions it opened; False if unknown."""
    row = session.get(ApiToken, token_id)
    if row is None:
        return False
    row.revoked = True
    session.execute(delete(WebSession).where(WebSession.token_id == token_id))
    return True


def rotate_token(
    session: Session, token_id: int, *, ttl_s: float | None = None
) -> tuple[str, ApiToken, User]:
    """Replace a user token by a new one for the same user and label, and revoke the old one.

    ``ttl_s=None`` gives the new token the old one's lifetime (none: until revoked). A revoked token
    cannot be rotated (``Conflict``): whoever revoked it meant it. Caller commits."""
    old, user = get_user_token(session, token_id)
    if old.revoked:
        raise Conflict(f"token {token_id} is revoked: create a new one instead", field="token_id")
    if ttl_s is None and old.expires_at is not None:
        ttl_s = max(1.0, (old.expires_at - old.created_at).total_seconds())
    token, row = issue_user_token(session, user, label=old.name, ttl_s=ttl_s)
    revoke_token(session, token_id)
    return token, row, user
