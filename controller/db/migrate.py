"""Alembic, programmatically: ``upgrade_database`` (what ``pyrecover db upgrade`` runs) and the
start-up check that refuses to serve an unmigrated database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class DatabaseNotMigrated(RuntimeError):
    """The database schema is missing or older than this code."""


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Passed as an attribute, not an ini option: URLs may contain '%' (ConfigParser interpolation).
        config.attributes["database_url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade_database(url: str, revision: str = "head") -> None:
    """Create or migrate the schema at ``url`` to ``revision`` (idempotent)."""
    from controller.db.engine import make_engine  # WAL + busy timeout for SQLite

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # A batch migration rebuilds a SQLite table (copy, drop, rename). With foreign keys
                # on, dropping the old table deletes every row that references it (ON DELETE
                # CASCADE): rebuilding ``runs`` would wipe every attempt, metric, event and token.
                # The pragma only takes before the first write of the transaction: here.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows with dangling foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_database_migrated(engine: Engine) -> None:
    """Raise ``DatabaseNotMigrated`` with the fix unless the schema is at this code's head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        have = "no schema" if current is None else f"revision {current}"
        raise DatabaseNotMigrated(
            f"the database at {where} is not migrated ({have}, this version needs {head}): "
            "run `pyrecover db upgrade`"
        )
