"""``controller/services/shares.py``: sharing is idempotent, recorded on the run, and undone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Event
from controller.services import Conflict, NotShared, UserNotFound, create_run
from controller.services.shares import list_shares, share_run, unshare_run
from controller.services.users import create_user
from controller.settings import Settings
from shared.schemas import RunCreate


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def test_share_list_unshare(session: Session) -> None:
    ann, ben = create_user(session, "ann"), create_user(session, "ben")
    body = {
        "name": "r",
        "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
        "resources": {"scheduler": "local", "time_limit": "1m"},
    }
    run = create_run(session, RunCreate.model_validate(body), owner=ann)
    first = share_run(session, run, "ben", by="ann", by_id=ann.id)
    assert share_run(session, run, "ben", by="ann", by_id=ann.id).id == first.id
    assert [(u.name, by) for _, u, by in list_shares(session, run)] == [("ben", "ann")]
    with pytest.raises(Conflict, match="owns run"):
        share_run(session, run, "ann", by="ann", by_id=ann.id)
    with pytest.raises(UserNotFound):
        share_run(session, run, "nobody", by="ann", by_id=ann.id)
    unshare_run(session, run, "ben", by="ann")
    assert list_shares(session, run) == []
    with pytest.raises(NotShared):
        unshare_run(session, run, "ben", by="ann")
    messages = [
        e.message for e in session.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id))
    ]
    assert messages[1:] == ["shared with ben by ann", "no longer shared with ben (by ann)"]
    assert ben.id != ann.id
