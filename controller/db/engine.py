"""Engine and session factory. SQLite runs in WAL mode with a busy timeout so the API and the
reconciler thread can write concurrently; PostgreSQL needs nothing special."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from controller.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 15_000


def _url_of(settings_or_url: Settings | str) -> str:
    return settings_or_url.database_url if isinstance(settings_or_url, Settings) else settings_or_url


def make_engine(settings_or_url: Settings | str, **kwargs: Any) -> Engine:
    """An engine for the settings' ``database_url`` (or a URL); creates a SQLite file's folder."""
    url = make_url(_url_of(settings_or_url))
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (the API serialises after committing)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
