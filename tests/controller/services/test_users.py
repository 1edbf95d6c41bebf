"""``controller/services/users.py``: the first user is an admin, roles change only on purpose, the
last admin stays one, and the active-run limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.services import Conflict, QuotaExceeded, UserNotFound, cancel_run, create_run, resume_run
from controller.services.users import (
    active_runs,
    create_user,
    ensure_user,
    first_admin,
    get_user,
    update_user,
)
from controller.settings import Settings
from shared.roles import Role
from shared.schemas import RunCreate


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def _spec(name: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": name,
            "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
            "resources": {"scheduler": "local", "time_limit": "1m"},
        }
    )


def test_the_first_user_is_an_admin_whatever_was_asked(session: Session) -> None:
    assert create_user(session, "ann", role=Role.VIEWER).role == Role.ADMIN
    assert create_user(session, "ben").role == Role.USER
    assert create_user(session, "cat", role=Role.VIEWER).role == Role.VIEWER
    with pytest.raises(Conflict, match="already exists"):
        create_user(session, "ben")
    for bad in ("", "a b", "-x", "x" * 65, "a/b", "ü"):
        with pytest.raises(ValueError):
            create_user(session, bad)


def test_ensure_user_never_changes_a_role_silently(session: Session) -> None:
    made = ensure_user(session, "ann")
    assert made.created and made.user.role == Role.ADMIN
    again = ensure_user(session, "ann")
    assert not again.created and again.user.id == made.user.id
    ensure_user(session, "ann", role=Role.ADMIN)  # the same role: fine
    with pytest.raises(Conflict, match="pyrecover user set ann"):
        ensure_user(session, "ann", role=Role.VIEWER)


def test_first_admin_creates_one_only_on_an_empty_database(session: Session) -> None:
    admin = first_admin(session)
    assert admin.name == "admin" and admin.role == Role.ADMIN
    assert first_admin(session).id == admin.id
    create_user(session, "zed", role=Role.ADMIN)
    assert first_admin(session).id == admin.id, "the oldest admin"
    for user in (admin, get_user(session, "zed")):
        user.role = Role.USER  # what only a hand-edited database can hold
    with pytest.raises(Conflict, match="no admin exists"):
        first_admin(session)


def test_the_last_admin_stays_one(session: Session) -> None:
    ann = create_user(session, "ann")
    with pytest.raises(Conflict, match="only admin"):
        update_user(session, ann, role=Role.USER)
    ben = create_user(session, "ben", role=Role.ADMIN)
    update_user(session, ann, role=Role.VIEWER)
    assert ann.role == Role.VIEWER and ben.role == Role.ADMIN
    with pytest.raises(UserNotFound):
        get_user(session, "nobody")


def test_the_active_run_limit(session: Session) -> None:
    ann = create_user(session, "ann", active_run_limit=2)
    a = create_run(session, _spec("a"), owner=ann)
    create_run(session, _spec("b"), owner=ann)
    with pytest.raises(QuotaExceeded, match="already has 2 active run"):
        create_run(session, _spec("c"), owner=ann)
    cancel_run(session, a, by="ann")  # no job: CANCELLED at once, no longer active
    assert active_runs(session, ann.id) == 1
    create_run(session, _spec("c"), owner=ann)
    with pytest.raises(QuotaExceeded):
        resume_run(session, a, by="ann")
    update_user(session, ann, limit=None, set_limit=True)
    resume_run(session, a, by="ann")
    assert active_runs(session, ann.id) == 3
    update_user(session, ann, limit=0, set_limit=True)
    with pytest.raises(QuotaExceeded):
        create_run(session, _spec("d"), owner=ann)
