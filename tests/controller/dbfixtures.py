"""Fresh databases for tests: a SQLite file per test, and a throw-away schema on PostgreSQL.

PostgreSQL comes from ``PYRECOVER_TEST_POSTGRES_URL`` (default: the role and database that
``deploy/postgres-local/up.sh`` creates); unreachable → skipped (CI turns skips into failures).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql+psycopg://pyrecover:pyrecover@127.0.0.1:5432/pyrecover_test"


def postgres_url() -> str:
    return os.environ.get("PYRECOVER_TEST_POSTGRES_URL", DEFAULT_PG)


def _pg_reachable(url: str) -> str | None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'test.db').as_posix()}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema (dropped afterwards)."""
    base = postgres_url()
    problem = _pg_reachable(base)
    if problem is not None:
        pytest.skip(f"PostgreSQL not reachable at {make_url(base).render_as_string()}: {problem}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))
