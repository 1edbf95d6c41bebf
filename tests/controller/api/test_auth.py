"""The auth matrix: missing/invalid/expired/revoked tokens → 401, worker tokens → 403 outside
their own run's reports, on every mutating and worker endpoint; open read-only mode."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.db.models import ApiToken, Run, WorkerEventRecord
from controller.db.types import utcnow
from controller.services import create_user_token, hash_token, issue_worker_token
from controller.settings import Settings
from shared.states import AttemptState
from tests.controller.api.conftest import Api, make_api, run_body

REPORT = {"attempt": 1, "events": [{"type": "finished", "seq": 0, "time": 1.0, "step": 1}]}


def _user_calls(run_id: int) -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/api/v1/runs", run_body("new-run")),
        ("GET", "/api/v1/runs", None),
        ("GET", f"/api/v1/runs/{run_id}", None),
        ("POST", f"/api/v1/runs/{run_id}/cancel", None),
        ("POST", f"/api/v1/runs/{run_id}/resume", None),
        ("POST", f"/api/v1/runs/{run_id}/actions", {"action": "stop"}),
        ("GET", f"/api/v1/runs/{run_id}/jobs", None),
        ("GET", f"/api/v1/runs/{run_id}/checkpoints", None),
        ("GET", f"/api/v1/runs/{run_id}/metrics", None),
        ("GET", f"/api/v1/runs/{run_id}/events", None),
        ("GET", "/api/v1/metrics", None),
    ]


def _expired_and_revoked(api: Api, run_id: int) -> list[str]:
    with api.factory() as s:
        expired_user = create_user_token(s, "old", ttl_s=60)
        revoked_worker = issue_worker_token(s, run_id)
        s.flush()
        for row in s.scalars(select(ApiToken)):
            if row.token_hash == hash_token(expired_user):
                row.expires_at = utcnow() - timedelta(seconds=1)
            if row.token_hash == hash_token(revoked_worker):
                row.revoked = True
        s.commit()
    return [expired_user, revoked_worker]


def _nothing_changed(api: Api) -> tuple[int, int]:
    with api.factory() as s:
        return (
            int(s.scalar(select(func.count()).select_from(Run)) or 0),
            int(s.scalar(select(func.count()).select_from(WorkerEventRecord)) or 0),
        )


def test_bad_credentials_are_401_everywhere(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id)
    before = _nothing_changed(api)
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        *({"Authorization": f"Bearer {t}"} for t in _expired_and_revoked(api, run_id)),
    ]
    calls = [*_user_calls(run_id), ("POST", f"/api/v1/runs/{run_id}/reports", REPORT)]
    for headers in bad_headers:
        for method, path, body in calls:
            r = api.client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (headers, method, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert _nothing_changed(api) == before
    assert api.client.get("/healthz").status_code == 200  # liveness needs no token


def test_worker_tokens_only_report_for_their_own_run(api: Api) -> None:
    run_a = api.create("run-a")["id"]
    run_b = api.create("run-b")["id"]
    token_a = api.attempt(run_a, state=AttemptState.RUNNING)
    api.attempt(run_b, state=AttemptState.RUNNING)
    before = _nothing_changed(api)
    for method, path, body in _user_calls(run_a):
        r = api.client.request(method, path, json=body, headers=api.h(token_a))
        assert r.status_code == 403, (method, path, r.text)
    r = api.client.post(f"/api/v1/runs/{run_b}/reports", json=REPORT, headers=api.h(token_a))
    assert r.status_code == 403 and f"run {run_a}" in r.json()["detail"]
    assert _nothing_changed(api) == before
    ok = api.client.post(f"/api/v1/runs/{run_a}/reports", json=REPORT, headers=api.h(token_a))
    assert ok.status_code == 200 and ok.json()["accepted"] == 1


def test_tokens_are_stored_hashed(api: Api) -> None:
    with api.factory() as s:
        rows = s.scalars(select(ApiToken)).all()
    assert rows and all(len(r.token_hash) == 64 and api.user not in r.token_hash for r in rows)
    assert all(r.prefix and api.user.startswith(r.prefix) for r in rows if r.kind == "user")


@pytest.fixture
def open_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, open_read_only=True)


def test_open_read_only_lets_gets_through_but_nothing_else(open_api: Api) -> None:
    run_id = open_api.create()["id"]
    assert open_api.client.get("/api/v1/runs").json()["total"] == 1
    assert open_api.client.get(f"/api/v1/runs/{run_id}/events").status_code == 200
    assert open_api.client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 401
    assert open_api.client.post("/api/v1/runs", json=run_body("x")).status_code == 401
    assert open_api.client.post(f"/api/v1/runs/{run_id}/reports", json=REPORT).status_code == 401


def test_settings_refuse_unsafe_serving() -> None:
    with pytest.raises(ValueError, match="without authentication"):
        Settings(host="0.0.0.0", auth_required=False).validate_for_serving()
    Settings(host="0.0.0.0").validate_for_serving()  # auth is on by default
    Settings(host="127.0.0.1", auth_required=False).validate_for_serving()
    with pytest.raises(ValueError, match="open_read_only"):
        Settings(host="10.1.2.3", auth_required=True, open_read_only=True)


def test_settings_defaults_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.auth_required and not s.open_read_only and not s.users_read_all_runs
    assert s.database_url == f"sqlite:///{(tmp_path / 'pyrecover.db').as_posix()}"
    assert s.public_url == "http://127.0.0.1:8000" and s.checkpoint_root == tmp_path / "checkpoints"
    monkeypatch.setenv("PYRECOVER_PORT", "9100")
    monkeypatch.setenv("PYRECOVER_SLURM_PROLOGUE", '["module load cuda"]')
    env = Settings(data_dir=tmp_path)
    assert env.port == 9100 and env.slurm_prologue == ["module load cuda"]
    assert env.public_url == "http://127.0.0.1:9100"
    monkeypatch.setenv("PYRECOVER_PORT", "65536")
    with pytest.raises(ValueError, match="port"):
        Settings()
