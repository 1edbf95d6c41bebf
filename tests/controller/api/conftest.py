"""The real app over a fresh SQLite DB per test (reconciler off), plus tokens and helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from controller.api import create_app
from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt
from controller.services import create_user_token, issue_worker_token
from controller.settings import Settings
from shared.roles import Role
from shared.states import AttemptState


def run_body(name: str = "run-1", **training: Any) -> dict[str, Any]:
    return {
        "name": name,
        "training": {"dataset": "data/d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 100}
        | training,
        "resources": {"scheduler": "local", "time_limit": "1m"},
        "policy": {"max_attempts": 5},
    }


@dataclass
class Api:
    client: TestClient
    factory: Callable[[], Session]
    settings: Settings
    user: str

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.user}"}

    def create(self, name: str = "run-1", **training: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/runs", json=run_body(name, **training), headers=self.h())
        assert r.status_code == 201, r.text
        return dict(r.json())

    def attempt(self, run_id: int, number: int = 1, state: AttemptState = AttemptState.PENDING) -> str:
        """Add an attempt as the reconciler would; return a worker token for the run."""
        with self.factory() as s:
            s.add(Attempt(run_id=run_id, number=number, backend="local", job_name=f"j{number}", state=state))
            token = issue_worker_token(s, run_id, attempt=number)
            s.commit()
        return token

    def step_dir(self, name: str, step: int, checkpoint_dir: str = "checkpoints") -> str:
        """Where run ``name``'s worker commits step ``step``: the only path a report may name."""
        return str(self.settings.resolve_checkpoint_dir(checkpoint_dir) / name / f"step-{step}")

    def token(self, name: str = "other", role: Role | None = None) -> str:
        """A token for user ``name`` (created if missing: role ``user``, or ``role``)."""
        with self.factory() as s:
            token = create_user_token(s, name, role=role)
            s.commit()
        return token


def make_api(tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    settings = Settings(
        **({"data_dir": tmp_path, "run_reconciler": False, "auth_required": True} | overrides)
    )
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with factory() as s:
        user = create_user_token(s, "tester")  # the first user: an admin
        s.commit()
    with TestClient(
        create_app(settings, session_factory=factory), base_url="http://127.0.0.1:8000"
    ) as client:
        yield Api(client=client, factory=factory, settings=settings, user=user)
    engine.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)
