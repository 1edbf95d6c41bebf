"""Ownership, against the real app: what an ordinary user could do to other users' runs before, and
what happens now (issue "What happens today", under "There is no ownership" and "quota").

* Another user's run is a 404 everywhere (API and dashboard), its secrets never reach them, and
  nothing they send changes it.
* A user token cannot post a run's reports: only that run's worker token can.
* Sharing lets a user act and a viewer read; the admin setting lets users read all runs.
* Every action records who did it ("cancel requested by alice"), through the API, the CLI and the
  dashboard.
* An admin's per-user limit on active runs answers 429, also to a burst of concurrent creations.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from controller.cli import app as cli_app
from controller.db.models import Event, Run, WorkerEventRecord
from controller.services.sessions import open_session
from controller.services.users import get_user
from controller.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from shared.roles import Role
from shared.states import AttemptState, RunState
from tests.controller.api.conftest import make_api
from tests.controller.dbfixtures import pg_url
from tests.security.conftest import Api, Live, progress, report, run_body, serve_live

__all__ = ["pg_url"]

SECRET = "sk-live-0123456789abcdef"
CSRF = "q" * 43


@pytest.fixture
def two(api: Api) -> dict[str, Any]:
    """alice and bob (users), alice's RUNNING run with a secret in its env and a FAILED run."""
    alice, bob = api.token("alice"), api.token("bob")
    body = run_body("alice-run") | {
        "resources": {"scheduler": "local", "time_limit": "1m", "env": {"HF_TOKEN": SECRET}}
    }
    r = api.client.post("/api/v1/runs", json=body, headers=api.h(alice))
    assert r.status_code == 201, r.text
    running = r.json()["id"]
    failed = api.client.post("/api/v1/runs", json=run_body("alice-failed"), headers=api.h(alice)).json()["id"]
    worker = api.attempt(running, state=AttemptState.RUNNING)
    with api.factory() as s:
        run = s.get(Run, running)
        assert run is not None
        run.state = RunState.RUNNING
        failed_run = s.get(Run, failed)
        assert failed_run is not None
        failed_run.state = RunState.FAILED
        s.commit()
    return {"alice": alice, "bob": bob, "running": running, "failed": failed, "worker": worker}


def _state(api: Api, run_id: int) -> tuple[Any, ...]:
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        events = s.scalar(select(func.count()).select_from(Event).where(Event.run_id == run_id))
        return (run.state, run.cancel_requested, run.pending_action, events)


def _session(api: Api, name: str) -> str:
    with api.factory() as s:
        secret = open_session(s, get_user(s, name))
        s.commit()
    return secret


def _browser(api: Api, name: str) -> None:
    api.client.cookies.clear()
    api.client.cookies.set(SESSION_COOKIE, _session(api, name))
    api.client.cookies.set(CSRF_COOKIE, CSRF)


def test_another_users_run_is_404_everywhere_and_its_secret_never_shows(
    api: Api, two: dict[str, Any]
) -> None:
    bob = api.h(two["bob"])
    before = {run_id: _state(api, run_id) for run_id in (two["running"], two["failed"])}
    answers: list[httpx.Response] = []
    for run_id in (two["running"], two["failed"]):
        for path in ("", "/jobs", "/checkpoints", "/metrics", "/events", "/shares"):
            answers.append(api.client.get(f"/api/v1/runs/{run_id}{path}", headers=bob))
        for action in ("cancel", "resume"):
            answers.append(api.client.post(f"/api/v1/runs/{run_id}/{action}", headers=bob))
        answers.append(
            api.client.post(f"/api/v1/runs/{run_id}/actions", json={"action": "stop"}, headers=bob)
        )
        answers.append(api.client.post(f"/api/v1/runs/{run_id}/shares", json={"user": "bob"}, headers=bob))
    assert {r.status_code for r in answers} == {404}, [r.text for r in answers if r.status_code != 404]
    # A run that does not exist answers exactly alike: the id tells bob nothing.
    absent = api.client.get("/api/v1/runs/999999", headers=bob).json()
    assert absent == {"detail": "run 999999 does not exist", "field": "run_id"}
    assert api.client.get(f"/api/v1/runs/{two['running']}", headers=bob).json()["detail"].startswith("run ")
    listed = api.client.get("/api/v1/runs", headers=bob).json()
    assert listed["total"] == 0 and listed["items"] == []
    assert api.client.get("/api/v1/runs", params={"name": "alice-run"}, headers=bob).json()["total"] == 0
    _browser(api, "bob")
    pages = [
        api.client.get(f"/runs/{two['running']}"),
        api.client.get(f"/runs/{two['running']}?fragment=1"),
        api.client.get(f"/runs/{two['running']}/series"),
        api.client.post(f"/runs/{two['running']}/actions/cancel", headers={CSRF_HEADER: CSRF}),
        api.client.post(f"/runs/{two['failed']}/actions/resume", headers={CSRF_HEADER: CSRF}),
    ]
    assert [p.status_code for p in pages] == [404] * 5
    runs_page = api.client.get("/")
    assert runs_page.status_code == 200 and "alice-run" not in runs_page.text
    assert 'all<span class="count">0</span>' in runs_page.text, "state counts are of bob's runs only"
    everything = "".join(r.text for r in [*answers, *pages, runs_page])
    assert SECRET not in everything and "alice-run" not in everything
    assert {run_id: _state(api, run_id) for run_id in before} == before, "bob changed alice's runs"
    # alice herself sees all of it.
    mine = api.client.get(f"/api/v1/runs/{two['running']}", headers=api.h(two["alice"])).json()
    assert mine["owner"] == "alice" and mine["name"] == "alice-run"
    api.client.cookies.clear()


def test_user_tokens_cannot_post_reports_not_even_the_owners(api: Api, two: dict[str, Any]) -> None:
    url = f"/api/v1/runs/{two['running']}/reports"
    for token in (two["alice"], two["bob"], api.user):  # the owner, another user, an admin
        r = api.client.post(url, json=report(progress(0, 1)), headers=api.h(token))
        assert r.status_code == 403 and "worker token" in r.json()["detail"], r.text
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(WorkerEventRecord)) == 0
    ok = api.client.post(url, json=report(progress(0, 1)), headers=api.h(two["worker"]))
    assert ok.status_code == 200 and ok.json()["accepted"] == 1


def test_sharing_lets_a_user_act_and_a_viewer_read(api: Api, two: dict[str, Any]) -> None:
    vic = api.token("vic", role=Role.VIEWER)
    run = two["running"]
    bob, alice = api.h(two["bob"]), api.h(two["alice"])
    # bob may not share alice's run with himself; alice may share it.
    assert api.client.post(f"/api/v1/runs/{run}/shares", json={"user": "bob"}, headers=bob).status_code == 404
    for user in ("bob", "vic"):
        r = api.client.post(f"/api/v1/runs/{run}/shares", json={"user": user}, headers=alice)
        assert r.status_code == 201 and r.json()["shared_by"] == "alice", r.text
    shares = api.client.get(f"/api/v1/runs/{run}/shares", headers=alice).json()
    assert [(s["user"], s["role"]) for s in shares] == [("bob", "user"), ("vic", "viewer")]
    # bob now reads and acts, but may not re-share (only the owner or an admin)
    assert api.client.get(f"/api/v1/runs/{run}", headers=bob).status_code == 200
    assert api.client.get("/api/v1/runs", headers=bob).json()["total"] == 1
    shared = api.client.post(f"/api/v1/runs/{run}/shares", json={"user": "vic"}, headers=bob)
    assert shared.status_code == 403
    # vic reads everything about it, acts on nothing, and creates nothing
    viewer = api.h(vic)
    assert api.client.get(f"/api/v1/runs/{run}/events", headers=viewer).status_code == 200
    for path, body in (("/cancel", None), ("/actions", {"action": "stop"})):
        assert api.client.post(f"/api/v1/runs/{run}{path}", json=body, headers=viewer).status_code == 403
    assert api.client.post("/api/v1/runs", json=run_body("vic-run"), headers=viewer).status_code == 403
    assert api.client.get(f"/api/v1/runs/{two['failed']}", headers=viewer).status_code == 404  # not shared
    _browser(api, "vic")
    page = api.client.get(f"/runs/{run}").text
    assert "alice-run" in page and 'data-action="cancel"' not in page, "a viewer gets no action buttons"
    assert api.client.get("/runs/new").status_code == 403
    api.client.cookies.clear()
    # bob acts: the event says so
    assert (
        api.client.post(f"/api/v1/runs/{run}/actions", json={"action": "stop"}, headers=bob).status_code
        == 200
    )
    assert _messages(api, run)[-1] == "stop requested by bob"
    # unsharing takes it away again
    assert api.client.delete(f"/api/v1/runs/{run}/shares/bob", headers=alice).status_code == 204
    assert api.client.get(f"/api/v1/runs/{run}", headers=bob).status_code == 404
    assert api.client.delete(f"/api/v1/runs/{run}/shares/bob", headers=alice).status_code == 404
    assert any(m == "shared with vic by alice" for m in _messages(api, run))


def _messages(api: Api, run_id: int) -> list[str]:
    with api.factory() as s:
        return [e.message for e in s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.id))]


@pytest.fixture
def read_all(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, users_read_all_runs=True)


def test_the_admin_setting_lets_users_read_every_run_and_act_on_none_of_theirs(read_all: Api) -> None:
    api = read_all
    alice, bob = api.token("alice"), api.token("bob")
    run = api.client.post("/api/v1/runs", json=run_body("alice-open"), headers=api.h(alice)).json()["id"]
    assert api.client.get(f"/api/v1/runs/{run}", headers=api.h(bob)).status_code == 200
    assert api.client.get("/api/v1/runs", headers=api.h(bob)).json()["total"] == 1
    cancel = api.client.post(f"/api/v1/runs/{run}/cancel", headers=api.h(bob))
    assert cancel.status_code == 403 and "may read" in cancel.json()["detail"]
    assert _messages(api, run) == ["run alice-open created by alice"]


def test_every_action_says_who_did_it(api: Api, two: dict[str, Any]) -> None:
    alice = api.h(two["alice"])
    run, failed = two["running"], two["failed"]
    assert (
        api.client.post(
            f"/api/v1/runs/{run}/actions", json={"action": "checkpoint"}, headers=alice
        ).status_code
        == 200
    )
    assert api.client.post(f"/api/v1/runs/{failed}/resume", headers=alice).status_code == 200
    _browser(api, "tester")  # the api fixture's first user: an admin
    web = api.client.post(f"/runs/{run}/actions/cancel", headers={CSRF_HEADER: CSRF})
    assert web.status_code == 200, web.text
    api.client.cookies.clear()
    assert "checkpoint requested by alice" in _messages(api, run)
    assert _messages(api, run)[-1] == "cancel requested by tester"
    assert "PENDING: resumed by alice" in _messages(api, failed)[-1]
    with api.factory() as s:
        created = s.scalar(select(Event).where(Event.run_id == run, Event.kind == "created"))
        assert created is not None and created.data == {"state": "PENDING", "owner": "alice", "by": "alice"}


def test_the_cli_acts_as_its_tokens_user(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    carol = live.token("carol")
    monkeypatch.setenv("PYRECOVER_URL", live.url)
    monkeypatch.setenv("PYRECOVER_TOKEN", carol)
    runner = CliRunner()
    submitted = runner.invoke(
        cli_app,
        ["submit", "--name", "carol-run", "--dataset", "d.parquet", "--tokenizer", "tok", "--steps", "10",
         "--time-limit", "1m", "--scheduler", "local"],
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    cancelled = runner.invoke(cli_app, ["cancel", "carol-run"])
    assert cancelled.exit_code == 0, cancelled.output
    events = httpx.get(f"{live.url}/api/v1/runs/1/events", headers=live.h(carol)).json()["items"]
    assert [e["message"] for e in events][:2] == [
        "run carol-run created by carol",
        "cancel requested by carol",
    ]
    # share / unshare through the CLI, as the owner
    live.token("dave")
    shared = runner.invoke(cli_app, ["share", "carol-run", "dave"], env={"COLUMNS": "200"})
    assert shared.exit_code == 0 and "dave" in shared.output, shared.output
    dave = live.token("dave")
    assert httpx.get(f"{live.url}/api/v1/runs/1", headers=live.h(dave)).status_code == 200
    assert runner.invoke(cli_app, ["unshare", "carol-run", "dave"]).exit_code == 0
    assert httpx.get(f"{live.url}/api/v1/runs/1", headers=live.h(dave)).status_code == 404
    monkeypatch.setenv("PYRECOVER_TOKEN", dave)
    refused = runner.invoke(cli_app, ["cancel", "1"])
    assert refused.exit_code == 1 and "HTTP 404" in refused.output


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def live_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    """``live`` on SQLite, and on PostgreSQL (where the limit's lock is a row lock)."""
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    yield from serve_live(tmp_path, database_url=url)


def test_the_active_run_limit_answers_429_even_to_a_concurrent_burst(live_db: Live) -> None:
    live = live_db
    erin = live.token("erin")
    limited = httpx.patch(f"{live.url}/api/v1/users/erin", json={"active_run_limit": 3}, headers=live.h())
    assert limited.status_code == 200 and limited.json()["active_run_limit"] == 3
    # Twelve creations at once, from twelve connections: the limit holds exactly.
    codes: list[int] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        r = httpx.post(
            f"{live.url}/api/v1/runs", json=run_body(f"burst-{i}"), headers=live.h(erin), timeout=60
        )
        with lock:
            codes.append(r.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] * 3 + [429] * 9, codes
    with live.factory() as s:
        owned = s.scalar(select(func.count()).select_from(Run).where(Run.owner_id == get_user(s, "erin").id))
    assert owned == 3
    refused = httpx.post(f"{live.url}/api/v1/runs", json=run_body("one-more"), headers=live.h(erin))
    assert (
        refused.status_code == 429 and refused.headers["retry-after"] and "limit" in refused.json()["detail"]
    )
    # Cancel one (no job yet: CANCELLED at once) and there is room again; resuming it needs room too.
    ids = [r["id"] for r in httpx.get(f"{live.url}/api/v1/runs", headers=live.h(erin)).json()["items"]]
    assert (
        httpx.post(f"{live.url}/api/v1/runs/{ids[0]}/cancel", headers=live.h(erin)).json()["state"]
        == "CANCELLED"
    )
    assert (
        httpx.post(f"{live.url}/api/v1/runs", json=run_body("fits"), headers=live.h(erin)).status_code == 201
    )
    resumed = httpx.post(f"{live.url}/api/v1/runs/{ids[0]}/resume", headers=live.h(erin))
    assert resumed.status_code == 429
    # Other users are not limited by erin's limit; an admin lifts it.
    assert (
        httpx.post(f"{live.url}/api/v1/runs", json=run_body("root-run"), headers=live.h()).status_code == 201
    )
    lifted = httpx.patch(f"{live.url}/api/v1/users/erin", json={"active_run_limit": None}, headers=live.h())
    assert lifted.json()["active_run_limit"] is None and lifted.json()["active_runs"] == 3
    assert httpx.post(f"{live.url}/api/v1/runs/{ids[0]}/resume", headers=live.h(erin)).status_code == 200
    print(
        f"\nactive-run limit 3, 12 concurrent creations: {codes.count(201)} x 201, {codes.count(429)} x 429"
    )


def test_token_create_makes_users_the_first_an_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PYRECOVER_DATABASE_URL", "PYRECOVER_HOST", "PYRECOVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
    first = runner.invoke(cli_app, ["token", "create", "--name", "ann", "--role", "viewer"])
    assert first.exit_code == 0 and "new user ann (role admin)" in first.output, first.output
    second = runner.invoke(cli_app, ["token", "create", "--name", "ben"])
    assert "new user ben (role user)" in second.output
    third = runner.invoke(cli_app, ["token", "create", "--name", "cat", "--role", "viewer"])
    assert "new user cat (role viewer)" in third.output
    again = runner.invoke(cli_app, ["token", "create", "--name", "ben"])
    assert again.exit_code == 0 and "new user" not in again.output  # a second token for ben
    clash = runner.invoke(cli_app, ["token", "create", "--name", "ben", "--role", "admin"])
    assert clash.exit_code == 1 and "exists with role user" in clash.output
    bad = runner.invoke(cli_app, ["token", "create", "--name", "no spaces;rm"])
    assert bad.exit_code == 1 and "could not create the token" in bad.output
    listed = runner.invoke(cli_app, ["user", "list"], env={"COLUMNS": "200"})
    rows = [line.split() for line in listed.output.splitlines() if "│" in line]
    assert [(r[3], r[5]) for r in rows if r[1].isdigit()] == [
        ("ann", "admin"),
        ("ben", "user"),
        ("cat", "viewer"),
    ]
