"""API tokens: user tokens (``pyrecover token create``) and run-scoped worker tokens.

Only the SHA-256 of a token is stored; the plaintext is returned once. Lookup is by hash (a
unique index), and the stored hash is compared with ``hmac.compare_digest`` on top.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import ApiToken
from controller.db.types import utcnow

USER_PREFIX = "pyr_u_"
WORKER_PREFIX = "pyr_w_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new(
    session: Session, *, name: str, kind: str, prefix: str, run_id: int | None, ttl_s: float | None
) -> str:
    token = prefix + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=ttl_s) if ttl_s is not None else None
    session.add(
        ApiToken(
            name=name,
            token_hash=hash_token(token),
            prefix=token[: len(prefix) + 4],
            kind=kind,
            run_id=run_id,
            expires_at=expires,
        )
    )
    return token


def create_user_token(session: Session, name: str, *, ttl_s: float | None = None) -> str:
    """A new user token (plaintext, shown once). Caller commits."""
    return _new(session, name=name, kind="user", prefix=USER_PREFIX, run_id=None, ttl_s=ttl_s)


def issue_worker_token(session: Session, run_id: int, *, ttl_s: float | None = None) -> str:
    """A token that may only ``POST /runs/{run_id}/reports``. Caller commits."""
    return _new(
        session, name=f"worker run {run_id}", kind="worker", prefix=WORKER_PREFIX, run_id=run_id, ttl_s=ttl_s
    )


def authenticate_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken | None:
    """The valid (known, unrevoked, unexpired) token row for ``token``, else ``None``."""
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    if row.revoked or (row.expires_at is not None and row.expires_at <= (now or utcnow())):
        return None
    return row


def user_for_token(session: Session, token: str) -> str | None:
    """The name of the user a valid user token belongs to (the dashboard's sign-in check)."""
    row = authenticate_token(session, token)
    return row.name if row is not None and row.kind == "user" else None


def revoke_token(session: Session, token_id: int) -> bool:
    row = session.get(ApiToken, token_id)
    if row is None:
        return False
    row.revoked = True
    return True
