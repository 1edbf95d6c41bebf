"""Migrations apply from empty on SQLite and PostgreSQL; the DB itself guards the invariants."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from controller.db import (
    DatabaseNotMigrated,
    check_database_migrated,
    make_engine,
    make_session_factory,
    upgrade_database,
)
from controller.db.models import Attempt, Checkpoint, Event, Run, WorkerEventRecord
from controller.services import create_run, first_admin
from shared.schemas import RunCreate
from shared.states import AttemptState


def _spec(name: str = "run-a") -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": name,
            "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
            "resources": {"scheduler": "local", "time_limit": "1m"},
        }
    )


def test_unmigrated_database_is_refused_with_the_fix(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    with pytest.raises(DatabaseNotMigrated, match=r"run `pyrecover db upgrade`"):
        check_database_migrated(engine)
    upgrade_database(any_db_url)
    check_database_migrated(engine)  # now fine
    upgrade_database(any_db_url)  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "attempts", "checkpoints", "metrics", "worker_events", "events", "api_tokens"} <= tables
    engine.dispose()


def _attempt(run_id: int, number: int, state: AttemptState) -> Attempt:
    return Attempt(run_id=run_id, number=number, backend="local", job_name=f"j{number}", state=state)


def test_one_live_attempt_per_run_is_enforced_by_the_database(any_db_url: str) -> None:
    upgrade_database(any_db_url)
    engine = make_engine(any_db_url)
    factory = make_session_factory(engine)
    with factory() as s:
        run = create_run(s, _spec(), owner=first_admin(s))
        other = create_run(s, _spec("run-b"), owner=first_admin(s))
        s.add(_attempt(run.id, 1, AttemptState.RUNNING))
        s.add(_attempt(other.id, 1, AttemptState.PENDING))  # another run: fine
        s.commit()
        run_id = run.id
    for state in (AttemptState.SUBMITTING, AttemptState.PENDING, AttemptState.RUNNING):
        with factory() as s:
            s.add(_attempt(run_id, 2, state))
            with pytest.raises(IntegrityError):
                s.commit()
    with factory() as s:
        # A STOPPING predecessor does not block its pre-queued successor; ended ones never do.
        live = s.scalar(select(Attempt).where(Attempt.run_id == run_id))
        assert live is not None
        live.state = AttemptState.STOPPING
        s.add(_attempt(run_id, 2, AttemptState.PENDING))
        s.add(_attempt(run_id, 3, AttemptState.ENDED))
        s.commit()
    with factory() as s:
        s.add(_attempt(run_id, 2, AttemptState.ENDED))  # the number is taken
        with pytest.raises(IntegrityError):
            s.commit()
    engine.dispose()


def test_unique_worker_event_key_and_checkpoint_step(any_db_url: str) -> None:
    from datetime import UTC, datetime

    upgrade_database(any_db_url)
    engine = make_engine(any_db_url)
    factory = make_session_factory(engine)
    now = datetime.now(UTC)
    with factory() as s:
        run_id = create_run(s, _spec(), owner=first_admin(s)).id
        s.add(WorkerEventRecord(run_id=run_id, attempt=1, seq=0, type="progress", time=now, payload={}))
        s.add(Checkpoint(run_id=run_id, step=5, path="/c/step-5", format="dcp"))
        s.commit()
    for row in (
        WorkerEventRecord(run_id=run_id, attempt=1, seq=0, type="progress", time=now, payload={}),
        Checkpoint(run_id=run_id, step=5, path="/c/other", format="dcp"),
    ):
        with factory() as s:
            s.add(row)
            with pytest.raises(IntegrityError):
                s.commit()
    with factory() as s:
        run = s.get(Run, run_id)
        assert run is not None and run.created_at.tzinfo is not None  # aware UTC on both backends
    engine.dispose()


def test_the_migrations_build_exactly_the_models_schema(any_db_url: str) -> None:
    """Models and migrations agree (columns, types, indexes, the one-live-attempt condition): a model
    change without a migration, or the reverse, fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from controller.db.models import LIVE_STATES_SQL, Base

    assert LIVE_STATES_SQL == "state IN ('SUBMITTING', 'PENDING', 'RUNNING')"  # what 0001 created
    upgrade_database(any_db_url)
    engine = make_engine(any_db_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def _legacy_rows(url: str, *, tokens: list[tuple[str, str]], runs: int) -> None:
    """Rows as a 0003 database holds them: tokens without users, runs without owners."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    engine = make_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None) if engine.dialect.name == "sqlite" else datetime.now(UTC)
    spec = _spec().model_dump(mode="json")
    import json

    with engine.begin() as conn:
        for i in range(runs):
            conn.execute(
                text(
                    "INSERT INTO runs (name, state, spec, scheduler, training_steps, current_step,"
                    " tokens_seen, attempts_count, resumed_after_attempt, pending_action, cancel_requested,"
                    " created_at, updated_at)"
                    " VALUES (:n, 'PENDING', :spec, 'local', 10, 0, 0, 0, 0, 'none', false, :t, :t)"
                ),
                {"n": f"old-{i}", "spec": json.dumps(spec), "t": now},
            )
            conn.execute(
                text("INSERT INTO events (run_id, time, kind, message) VALUES (:r, :t, 'created', 'old')"),
                {"r": i + 1, "t": now},
            )
        for i, (name, kind) in enumerate(tokens):
            conn.execute(
                text(
                    "INSERT INTO api_tokens (name, token_hash, prefix, kind, run_id, created_at, revoked)"
                    " VALUES (:n, :h, 'pyr_', :k, :r, :t, false)"
                ),
                {"n": name, "h": f"{i:064d}", "k": kind, "r": 1 if kind == "worker" else None, "t": now},
            )
    engine.dispose()


def test_migration_0004_makes_users_of_token_names_and_hands_runs_to_the_first(any_db_url: str) -> None:
    from controller.db.models import ApiToken, User
    from shared.roles import Role

    upgrade_database(any_db_url, "0003")
    _legacy_rows(
        any_db_url,
        tokens=[("alice", "user"), ("worker run 1", "worker"), ("bob", "user"), ("alice", "user")],
        runs=2,
    )
    upgrade_database(any_db_url)
    engine = make_engine(any_db_url)
    with make_session_factory(engine)() as s:
        users = {u.name: u for u in s.scalars(select(User))}
        assert {n: u.role for n, u in users.items()} == {"alice": Role.ADMIN, "bob": Role.USER}
        assert {r.owner_id for r in s.scalars(select(Run))} == {users["alice"].id}
        holders = [(t.name, t.user_id) for t in s.scalars(select(ApiToken).order_by(ApiToken.id))]
        alice, bob = users["alice"].id, users["bob"].id
        assert holders == [("alice", alice), ("worker run 1", None), ("bob", bob), ("alice", alice)]
        # Rebuilding ``runs`` (SQLite batch mode) once cascaded into every row referencing a run.
        assert len(s.scalars(select(Event)).all()) == 2
    engine.dispose()


def test_migration_0004_gives_ownerless_runs_an_admin(any_db_url: str) -> None:
    from controller.db.models import User
    from shared.roles import Role

    upgrade_database(any_db_url, "0003")
    _legacy_rows(any_db_url, tokens=[], runs=1)
    upgrade_database(any_db_url)
    engine = make_engine(any_db_url)
    with make_session_factory(engine)() as s:
        [admin] = s.scalars(select(User)).all()
        assert (admin.name, admin.role) == ("admin", Role.ADMIN)
        assert s.scalars(select(Run.owner_id)).all() == [admin.id]
    engine.dispose()
