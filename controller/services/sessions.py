"""Dashboard sessions and one-time login codes. The caller commits.

A session is a random id in the browser's cookie and a row here holding its SHA-256, the user, the
token the browser signed in with (if any) and an expiry. The cookie never holds an API token:
a stolen cookie dies at logout, at expiry, or when that token is revoked; a copy of the database
holds no usable session id.

A login code (``pyrecover demo``'s link, ``pyrecover user login-link``) is exchanged once for a
session: redeeming it is one conditional UPDATE, so two browsers racing with the same link cannot
both win.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from controller.db.models import LoginCode, User, WebSession
from controller.db.types import utcnow

SESSION_TTL_S = 12 * 3600
"""How long a dashboard sign-in lasts (``Settings.session_ttl_s``)."""
LOGIN_CODE_TTL_S = 15 * 60
MAX_SECRET_CHARS = 128
"""Ours are 43 characters; longer input is not worth hashing."""


@dataclass(frozen=True)
class SignedIn:
    session_id: int
    user: User
    token_id: int | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", errors="surrogatepass")).hexdigest()


def open_session(
    session: Session, user: User, *, ttl_s: float = SESSION_TTL_S, token_id: int | None = None
) -> str:
    """A new session for ``user``; returns the id for the cookie (only its hash is stored).
    Expired sessions and codes are purged on the way, so neither table grows without bound."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    session.execute(delete(LoginCode).where(LoginCode.expires_at <= now))
    secret = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=_digest(secret),
            user_id=user.id,
            token_id=token_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    return secret


def resolve_session(session: Session, secret: str | None) -> SignedIn | None:
    """The live session the cookie names, else ``None`` (unknown, expired or signed out)."""
    if not secret or len(secret) > MAX_SECRET_CHARS or not secret.isprintable():
        return None
    row = session.execute(
        select(WebSession, User)
        .join(User, WebSession.user_id == User.id)
        .where(WebSession.id_hash == _digest(secret), WebSession.expires_at > utcnow())
    ).first()
    if row is None:
        return None
    web, user = row
    return SignedIn(session_id=web.id, user=user, token_id=web.token_id)


def close_session(session: Session, secret: str | None) -> bool:
    """Delete the session the cookie names (logout); True if there was one."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        return False
    result = session.execute(delete(WebSession).where(WebSession.id_hash == _digest(secret)))
    return bool(getattr(result, "rowcount", 0))


def issue_login_code(session: Session, user: User, *, ttl_s: float = LOGIN_CODE_TTL_S) -> str:
    """A one-time code that signs a browser in as ``user`` within ``ttl_s`` seconds."""
    code = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        LoginCode(
            code_hash=_digest(code),
            user_id=user.id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    return code


def redeem_login_code(session: Session, code: str | None) -> User | None:
    """The user of a valid, unused, unexpired code, which is used up by this call; else ``None``."""
    if not code or len(code) > MAX_SECRET_CHARS or not code.isprintable():
        return None
    now = utcnow()
    digest = _digest(code)
    result = session.execute(
        update(LoginCode)
        .where(LoginCode.code_hash == digest, LoginCode.used_at.is_(None), LoginCode.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    user_id = session.scalar(select(LoginCode.user_id).where(LoginCode.code_hash == digest))
    return session.get(User, user_id) if user_id is not None else None
