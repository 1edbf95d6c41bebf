"""Alembic environment: the URL comes from ``controller.settings`` (or the caller), never a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from controller.db.engine import make_engine
from controller.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("database_url")
    if url is None:
        from controller.settings import Settings

        url = Settings().database_url
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `pyrecover db upgrade`")
run_migrations_online()
