"""Shared pieces of the attack tests: the real app over a fresh DB (``api``, from the API tests'
conftest), the real app served over real HTTP (``live``: uvicorn with the controller's own
protocol and settings, as ``pyrecover serve`` runs it), a seeded module-scoped app for the fuzzer,
and the app's routes enumerated, so that an endpoint added later is attacked without anyone
having to remember it."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from controller.api import create_app
from controller.api.limits import ReportRateLimiter
from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt
from controller.services import (
    create_run,
    create_user,
    create_user_token,
    ingest,
    issue_user_token,
    issue_worker_token,
)
from controller.settings import Settings
from shared.schemas import ReportBatch, RunCreate
from shared.states import AttemptState, RunState
from tests.controller.api.conftest import Api, make_api, run_body
from tests.controller.dbfixtures import _pg_reachable, postgres_url

__all__ = ["Api", "Live", "Seeded", "api", "api_routes", "live", "run_body", "serve_live"]

T0 = 1_800_000_000.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)


@dataclass
class Live:
    """The real app behind uvicorn on a loopback port, over a fresh migrated SQLite DB."""

    url: str
    port: int
    settings: Settings
    factory: Callable[[], Session]
    admin: str
    """A token of the first user, an admin."""
    server: Any

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}

    def token(self, name: str, role: Any = None) -> str:
        with self.factory() as s:
            token = create_user_token(s, name, role=role)
            s.commit()
        return token


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_live(tmp_path: Path, **overrides: Any) -> Iterator[Live]:
    """Serve ``create_app`` with ``controller.serving.uvicorn_config`` (the head timeout included)."""
    import uvicorn

    from controller.serving import uvicorn_config

    settings = Settings(
        data_dir=tmp_path, run_reconciler=False, port=_free_port(), **({"host": "127.0.0.1"} | overrides)
    )
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with factory() as s:
        admin = create_user_token(s, "root")
        s.commit()
    app = create_app(settings, session_factory=factory)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{settings.port}", settings.port, settings, factory, admin, server)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    yield from serve_live(tmp_path)


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app routes, dashboard included, walked from its router (FastAPI >=
    0.16x wraps included routers; their effective routes carry the full path)."""
    out: set[tuple[str, str]] = set()

    def add(path: Any, methods: Any) -> None:
        for method in methods or ():
            if method not in ("HEAD", "OPTIONS") and isinstance(path, str):
                out.add((method, path))

    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            add(getattr(route, "path", None), getattr(route, "methods", None))
            continue
        for context in contexts():
            add(context.path, getattr(context.original_route, "methods", None))
    return sorted(out)


def report(*events: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    return {"attempt": attempt, "events": list(events)}


def progress(seq: int, step: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "progress",
        "seq": seq,
        "time": T0 + step,
        "step": step,
        "loss": 3.0,
        "lr": 1e-3,
        "tokens_seen": step * 1000,
    } | extra


@dataclass
class Seeded:
    """An app with runs in several states, a worker token for the running one, and a user token."""

    client: TestClient
    app: FastAPI
    factory: Callable[[], Session]
    user: str
    worker: str
    running_id: int
    failed_id: int

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.user}"}


def _seed(factory: Callable[[], Session]) -> tuple[str, str, int, int]:
    with factory() as s:
        owner = create_user(s, "fuzzer")  # the first user: an admin, who may call every route
        # The fuzzer revokes and rotates tokens by id (1, 2, ...): decoys take the small ids, so the
        # token it calls with survives the revoke route's own fuzzing (test_fuzz_openapi revives it
        # before each operation in case a generated id hit it anyway).
        for i in range(64):
            issue_user_token(s, owner, label=f"decoy-{i}")
        user = issue_user_token(s, owner, label="fuzzer")[0]
        body = run_body("seeded-running")
        running = create_run(s, RunCreate.model_validate(body), owner=owner)
        failed = create_run(s, RunCreate.model_validate(run_body("seeded-failed")), owner=owner)
        s.flush()
        s.add(
            Attempt(run_id=running.id, number=1, backend="local", job_name="j1", state=AttemptState.PENDING)
        )
        running.state = RunState.QUEUED
        failed.state = RunState.FAILED
        worker = issue_worker_token(s, running.id, attempt=1)
        s.flush()
        events = [
            {"type": "started", "seq": 0, "time": T0, "step": 0, "world_size": 1},
            *(progress(i, i) for i in range(1, 20)),
            {
                "type": "checkpoint_committed",
                "seq": 20,
                "time": T0 + 20,
                "step": 19,
                "path": "/ckpt/seeded-running/step-19",
                "format": "dcp",
                "size_bytes": 3 * 2**33,  # 24 GiB: past 32 bits
                "save_seconds": 2.0,
            },
        ]
        ingest(s, running.id, ReportBatch.model_validate(report(*events)))
        s.commit()
        return user, worker, running.id, failed.id


def seeded_app(settings: Settings) -> Iterator[Seeded]:
    """The app over ``settings.database_url`` (migrated here), seeded; the report rate limit is
    lifted so a fuzzer reaches the ingest code instead of 429 (tests/security/test_limits.py owns
    the limit)."""
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    user, worker, running_id, failed_id = _seed(factory)
    app = create_app(settings, session_factory=factory)
    app.state.report_limiter = ReportRateLimiter(rate_per_s=1e9, burst=10**9)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
        yield Seeded(client, app, factory, user, worker, running_id, failed_id)
    engine.dispose()


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for one module (skipped when PostgreSQL is unreachable)."""
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
