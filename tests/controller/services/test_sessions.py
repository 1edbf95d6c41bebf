"""``controller/services/sessions.py``: sessions by hashed random id, expiry, logout; login codes
used once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import LoginCode, WebSession
from controller.db.types import utcnow
from controller.services.sessions import (
    close_session,
    issue_login_code,
    open_session,
    redeem_login_code,
    resolve_session,
)
from controller.services.users import create_user
from controller.settings import Settings


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def test_a_session_resolves_until_closed_or_expired(session: Session) -> None:
    ann = create_user(session, "ann")
    secret = open_session(session, ann, ttl_s=60)
    assert len(secret) >= 43
    found = resolve_session(session, secret)
    assert found is not None and found.user.name == "ann"
    for bad in (None, "", secret + "x", secret[:-1], "x" * 1000, "a\x00b"):
        assert resolve_session(session, bad) is None
    assert secret not in str(session.scalars(select(WebSession.id_hash)).all())
    assert close_session(session, secret) and resolve_session(session, secret) is None
    assert not close_session(session, secret)
    later = open_session(session, ann, ttl_s=60)
    session.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert resolve_session(session, later) is None


def test_opening_a_session_purges_expired_rows(session: Session) -> None:
    ann = create_user(session, "ann")
    for _ in range(3):
        open_session(session, ann)
        issue_login_code(session, ann)
    session.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.execute(update(LoginCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    open_session(session, ann)
    assert session.scalar(select(func.count()).select_from(WebSession)) == 1
    assert session.scalar(select(func.count()).select_from(LoginCode)) == 0


def test_a_login_code_is_redeemed_once_and_expires(session: Session) -> None:
    ann = create_user(session, "ann")
    code = issue_login_code(session, ann, ttl_s=60)
    user = redeem_login_code(session, code)
    assert user is not None and user.name == "ann"
    assert redeem_login_code(session, code) is None
    for bad in (None, "", "nope", "x" * 500):
        assert redeem_login_code(session, bad) is None
    stale = issue_login_code(session, ann, ttl_s=60)
    session.execute(update(LoginCode).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert redeem_login_code(session, stale) is None
