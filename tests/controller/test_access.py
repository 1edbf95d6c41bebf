"""``controller/access.py``: who may read, act on and share a run, for every kind of principal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import access
from controller.auth import AuthError, Principal, no_auth_principal, open_read_principal, user_principal
from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Run
from controller.services import RunNotFound, create_run, create_user
from controller.services.shares import share_run
from controller.settings import Settings
from shared.roles import Role
from shared.schemas import RunCreate


def _spec(name: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": name,
            "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
            "resources": {"scheduler": "local", "time_limit": "1m"},
        }
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Session, dict[str, Any]]]:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    with make_session_factory(engine)() as s:
        users = {
            "ada": create_user(s, "ada"),  # the first user: an admin
            "olive": create_user(s, "olive"),
            "otto": create_user(s, "otto"),
            "vera": create_user(s, "vera", role=Role.VIEWER),
            "uma": create_user(s, "uma"),  # a user the run is shared with
        }
        run = create_run(s, _spec("r"), owner=users["olive"])
        share_run(s, run, "vera", by="olive", by_id=users["olive"].id)
        share_run(s, run, "uma", by="olive", by_id=users["olive"].id)
        create_run(s, _spec("otto-run"), owner=users["otto"])
        s.flush()
        principals: dict[str, Any] = {n: user_principal(u, settings) for n, u in users.items()}
        principals["reader"] = user_principal(
            users["otto"], Settings(data_dir=tmp_path, users_read_all_runs=True)
        )
        principals["no-auth"] = no_auth_principal()
        principals["open"] = open_read_principal()
        principals["worker"] = Principal(kind="worker", name="worker run 1", run_id=run.id)
        yield s, {"run": run.id, **principals}
    engine.dispose()


# principal: (reads, acts, shares) on olive's run; "404" where reading is refused.
EXPECTED = {
    "olive": ("ok", "ok", "ok"),
    "ada": ("ok", "ok", "ok"),
    "no-auth": ("ok", "ok", "ok"),
    "uma": ("ok", "ok", 403),
    "vera": ("ok", 403, 403),
    "reader": ("ok", 403, 403),
    "open": ("ok", 401, 401),
    "otto": (404, 404, 404),
    "worker": (404, 404, 404),
}


def _outcome(fn: Any, session: Session, principal: Principal, run_id: int) -> Any:
    try:
        fn(session, principal, run_id)
    except RunNotFound:
        return 404
    except AuthError as exc:
        return exc.status
    return "ok"


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_who_may_read_act_and_share(world: tuple[Session, dict[str, Any]], who: str) -> None:
    session, w = world
    got = tuple(
        _outcome(fn, session, w[who], w["run"])
        for fn in (access.readable_run, access.actionable_run, access.shareable_run)
    )
    assert got == EXPECTED[who]


def test_the_visible_filter_agrees_with_readable_run(world: tuple[Session, dict[str, Any]]) -> None:
    session, w = world
    all_runs = set(session.scalars(select(Run.id)))
    for who in EXPECTED:
        clause = access.visible_runs(w[who])
        listed = all_runs if clause is None else set(session.scalars(select(Run.id).where(clause)))
        readable = {r for r in all_runs if _outcome(access.readable_run, session, w[who], r) == "ok"}
        assert listed == readable, who


def test_viewers_and_open_readers_may_not_create_runs(world: tuple[Session, dict[str, Any]]) -> None:
    _session, w = world
    for who in ("olive", "ada", "no-auth"):
        access.require_creator(w[who])
    for who, status in (("vera", 403), ("open", 401), ("worker", 403)):
        with pytest.raises(AuthError) as refused:
            access.require_creator(w[who])
        assert refused.value.status == status
