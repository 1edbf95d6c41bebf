"""Every user endpoint: create, list (paging + state filter), detail, cancel, resume, actions,
jobs, checkpoints, metrics (downsampled), events; 404/409 bodies that say what is wrong."""

from __future__ import annotations

from sqlalchemy import select

from controller.db.models import Run
from shared.states import AttemptState, RunState
from tests.controller.api.conftest import Api, run_body


def test_create_and_read(api: Api) -> None:
    run = api.create("alpha")
    assert run["state"] == "PENDING" and run["training_steps"] == 100 and run["current_step"] == 0
    assert run["spec"]["training"]["training_steps"] == 100 and run["spec"]["policy"]["max_attempts"] == 5
    assert run["goodput"] is None and run["attempts_count"] == 0
    got = api.client.get(f"/api/v1/runs/{run['id']}", headers=api.h()).json()
    assert got["name"] == "alpha" and got["id"] == run["id"]
    events = api.client.get(f"/api/v1/runs/{run['id']}/events", headers=api.h()).json()
    assert [e["kind"] for e in events["items"]] == ["created"]


def test_duplicate_name_is_409_naming_the_field(api: Api) -> None:
    api.create("same")
    r = api.client.post("/api/v1/runs", json=run_body("same"), headers=api.h())
    assert r.status_code == 409 and r.json()["field"] == "name" and "same" in r.json()["detail"]


def test_list_paginates_newest_first_and_filters_by_state(api: Api) -> None:
    ids = [api.create(f"r{i}")["id"] for i in range(7)]
    with api.factory() as s:
        for run in s.scalars(select(Run).where(Run.id.in_(ids[:3]))):
            run.state = RunState.FAILED
        s.commit()
    page1 = api.client.get("/api/v1/runs?limit=3", headers=api.h()).json()
    page2 = api.client.get("/api/v1/runs?limit=3&offset=3", headers=api.h()).json()
    page3 = api.client.get("/api/v1/runs?limit=3&offset=6", headers=api.h()).json()
    assert page1["total"] == 7 and [r["id"] for r in page1["items"]] == ids[::-1][:3]
    assert [r["id"] for r in page1["items"] + page2["items"] + page3["items"]] == ids[::-1]
    failed = api.client.get("/api/v1/runs?state=FAILED", headers=api.h()).json()
    assert failed["total"] == 3 and {r["state"] for r in failed["items"]} == {"FAILED"}
    by_name = api.client.get("/api/v1/runs?name=r4", headers=api.h()).json()
    assert [r["id"] for r in by_name["items"]] == [ids[4]]
    bad = api.client.get("/api/v1/runs?state=SLEEPING&limit=0", headers=api.h())
    assert bad.status_code == 422 and {d["field"] for d in bad.json()["detail"]} == {"state", "limit"}


def test_unknown_run_is_404_on_every_run_endpoint(api: Api) -> None:
    for method, path in [
        ("GET", ""),
        ("GET", "/jobs"),
        ("GET", "/checkpoints"),
        ("GET", "/metrics"),
        ("GET", "/events"),
        ("POST", "/cancel"),
        ("POST", "/resume"),
    ]:
        r = api.client.request(method, f"/api/v1/runs/4242{path}", headers=api.h())
        assert r.status_code == 404, path
        assert r.json() == {"detail": "run 4242 does not exist", "field": "run_id"}
    r = api.client.post("/api/v1/runs/4242/actions", json={"action": "stop"}, headers=api.h())
    assert r.status_code == 404


def test_cancel_without_a_job_ends_at_once_then_resume(api: Api) -> None:
    run_id = api.create()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/cancel", headers=api.h())
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
    again = api.client.post(f"/api/v1/runs/{run_id}/cancel", headers=api.h())
    assert again.status_code == 409 and "already CANCELLED" in again.json()["detail"]
    resumed = api.client.post(f"/api/v1/runs/{run_id}/resume", headers=api.h()).json()
    assert resumed["state"] == "PENDING" and resumed["cancel_requested"] is False
    assert api.client.post(f"/api/v1/runs/{run_id}/resume", headers=api.h()).status_code == 409
    kinds = [
        e["kind"] for e in api.client.get(f"/api/v1/runs/{run_id}/events", headers=api.h()).json()["items"]
    ]
    assert kinds == ["created", "cancel_requested", "state", "state"]


def test_cancel_with_a_live_attempt_is_left_to_the_reconciler(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id, state=AttemptState.RUNNING)
    r = api.client.post(f"/api/v1/runs/{run_id}/cancel", headers=api.h()).json()
    assert r["state"] == "PENDING" and r["cancel_requested"] is True


def test_actions_need_a_running_run_and_are_delivered_once(api: Api) -> None:
    run_id = api.create()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/actions", json={"action": "checkpoint"}, headers=api.h())
    assert r.status_code == 409 and "RUNNING" in r.json()["detail"]
    bad = api.client.post(f"/api/v1/runs/{run_id}/actions", json={"action": "explode"}, headers=api.h())
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "action"
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.state = RunState.RUNNING
        s.commit()
    r = api.client.post(f"/api/v1/runs/{run_id}/actions", json={"action": "checkpoint"}, headers=api.h())
    assert r.status_code == 200 and r.json()["pending_action"] == "checkpoint"
    worker = api.attempt(run_id, state=AttemptState.RUNNING)
    batch = {"attempt": 1, "events": [{"type": "finished", "seq": 0, "time": 1.0, "step": 1}]}
    first = api.client.post(f"/api/v1/runs/{run_id}/reports", json=batch, headers=api.h(worker)).json()
    batch["events"][0]["seq"] = 1
    second = api.client.post(f"/api/v1/runs/{run_id}/reports", json=batch, headers=api.h(worker)).json()
    assert first["action"] == "checkpoint" and second["action"] == "none"


def test_healthz_and_openapi(api: Api) -> None:
    for path in ("/healthz", "/api/v1/healthz"):
        assert api.client.get(path).json() == {"status": "ok", "database": "ok", "reconciler": "off"}
    doc = api.client.get("/openapi.json").json()
    paths = set(doc["paths"])
    for p in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/resume",
        "/api/v1/runs/{run_id}/actions",
        "/api/v1/runs/{run_id}/jobs",
        "/api/v1/runs/{run_id}/checkpoints",
        "/api/v1/runs/{run_id}/metrics",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/runs/{run_id}/reports",
        "/api/v1/healthz",
        "/api/v1/metrics",
    ):
        assert p in paths, p
    assert {"RunCreate", "RunPublic", "ReportBatch", "ReportReply"} <= set(doc["components"]["schemas"])
