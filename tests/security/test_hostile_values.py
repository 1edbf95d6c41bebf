"""Regression tests for the 500s the fuzzer found, on SQLite and on PostgreSQL (whose INTEGER is
32-bit and whose TEXT refuses NUL bytes): each hostile value is now a 422 naming the field, or is
stored in a form every later read can serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.states import AttemptState
from tests.controller.api.conftest import Api, make_api
from tests.controller.dbfixtures import pg_url, sqlite_url  # noqa: F401 - fixtures
from tests.security.conftest import progress, report

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    yield from make_api(tmp_path, database_url=url)


def _post(api: Api, run_id: int, token: str, batch: Any) -> Any:
    body = json.dumps(batch)  # allow_nan: NaN and Infinity literals, as Python's json writes them
    return api.client.post(
        f"/api/v1/runs/{run_id}/reports",
        content=body,
        headers=api.h(token) | {"Content-Type": "application/json"},
    )


def test_non_finite_metrics_are_stored_as_no_value(db_api: Api) -> None:
    run_id = db_api.create()["id"]
    token = db_api.attempt(run_id, state=AttemptState.RUNNING)
    batch = report(
        progress(0, 1, loss=float("nan")),
        progress(1, 2, lr=float("inf"), grad_norm=float("-inf"), tokens_per_s=float("inf")),
    )
    assert _post(db_api, run_id, token, batch).json()["accepted"] == 2
    r = db_api.client.get(f"/api/v1/runs/{run_id}/metrics", headers=db_api.h())
    assert r.status_code == 200, r.text
    points = r.json()["items"]
    assert points[0]["loss"] is None and points[1]["lr"] is None and points[1]["grad_norm"] is None


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"time": 1e300}, "time"),
        ({"time": float("nan")}, "time"),
        ({"time": -1e12}, "time"),
        ({"seq": 2**31}, "seq"),
        ({"step": 2**40}, "step"),
        ({"tokens_seen": 2**63}, "tokens_seen"),
    ],
)
def test_values_the_store_cannot_hold_are_refused_by_name(
    db_api: Api, event: dict[str, Any], field: str
) -> None:
    run_id = db_api.create()["id"]
    token = db_api.attempt(run_id, state=AttemptState.RUNNING)
    r = _post(db_api, run_id, token, report(progress(0, 1), progress(1, 2) | event))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == f"events[1].{field}"
    assert db_api.client.get(f"/api/v1/runs/{run_id}/metrics", headers=db_api.h()).json()["total"] == 0


def test_real_sized_counters_fit(db_api: Api) -> None:
    """A 1B-parameter run passes 2**31 tokens within hours; its checkpoints are tens of GB."""
    run_id = db_api.create()["id"]
    token = db_api.attempt(run_id, state=AttemptState.RUNNING)
    big = 3 * 2**31
    ckpt = {
        "type": "checkpoint_committed",
        "seq": 1,
        "time": T0,
        "step": 2,
        "path": db_api.step_dir("run-1", 2),
        "format": "dcp",
        "size_bytes": 40 * 2**30,
        "save_seconds": 30.0,
        "tokens_seen": big,
    }
    r = _post(db_api, run_id, token, report(progress(0, 1, tokens_seen=big), ckpt))
    assert r.status_code == 200, r.text
    run = db_api.client.get(f"/api/v1/runs/{run_id}", headers=db_api.h()).json()
    assert run["tokens_seen"] == big
    ckpts = db_api.client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=db_api.h()).json()["items"]
    assert ckpts[0]["size_bytes"] == 40 * 2**30


def test_nul_bytes_in_worker_text_are_kept_readable(db_api: Api) -> None:
    run_id = db_api.create()["id"]
    token = db_api.attempt(run_id, state=AttemptState.RUNNING)
    failed = {"type": "failed", "seq": 0, "time": T0, "step": 1, "error": "Traceback\x00boom"}
    warning = {"type": "warning", "seq": 1, "time": T0, "step": 1, "kind": "k\x00", "message": "m\x00"}
    assert _post(db_api, run_id, token, report(failed, warning)).status_code == 200
    run = db_api.client.get(f"/api/v1/runs/{run_id}", headers=db_api.h()).json()
    assert "boom" in json.dumps(run)


def test_hostile_ids_names_and_bodies(db_api: Api) -> None:
    h = db_api.h()
    for path in ("/api/v1/runs/2147483648", "/api/v1/runs/99999999999999999999999", "/api/v1/runs/0"):
        assert db_api.client.get(path, headers=h).status_code == 422, path
    assert db_api.client.get("/api/v1/runs?offset=99999999999999999999", headers=h).status_code == 422
    for name in ("a\x00b", "../x", "x" * 63):
        r = db_api.client.get("/api/v1/runs", params={"name": name}, headers=h)
        assert r.status_code == 200 and r.json()["total"] == 0, name
    for url in ("/api/v1/runs", "/api/v1/runs/1/actions"):
        r = db_api.client.post(url, content=b"\xff\xfe{", headers=h | {"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body", r.text
