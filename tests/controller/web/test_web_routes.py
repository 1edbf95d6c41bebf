"""Page routes against the real app over a fresh SQLite DB (reconciler off): pages, paging, series,
actions through the API, the new-run form, CSRF and sign-in. Auth is on, as by default: the
``client`` browser is signed in as the first user (an admin, so it sees every seeded run)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.web.security import SESSION_COOKIE
from tests.controller.web.web_seed import add_run, make_app, make_token, seed_dashboard, sign_in

CSRF_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture
def app_parts(tmp_path: Path) -> Any:
    return make_app(tmp_path)


@pytest.fixture
def client(app_parts: Any) -> Iterator[TestClient]:
    app, factory, _settings = app_parts
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        sign_in(c, factory, "ada")
        yield c


def _csrf(client: TestClient, path: str = "/") -> str:
    match = CSRF_RE.search(client.get(path).text)
    assert match is not None
    return match.group(1)


def test_runs_page_lists_filters_and_pages(client: TestClient, app_parts: Any) -> None:
    _app, factory, _ = app_parts
    seeded = seed_dashboard(factory)
    for i in range(60):
        add_run(factory, f"bulk-{i:03d}", "COMPLETED")
    html = client.get("/").text
    assert html.count("<tr data-run-id=") == 50
    first = client.get("/?state=RUNNING").text
    # ETA of the running run: (4000 - 2999) steps x 0.5 s at its newest point
    assert "8m 20s" in first and "deadline_stop ×2" in first
    for state in ("PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"):
        assert f'data-state="{state}"' in html
    older = re.search(r'href="(/\?before=\d+)" id="page-older"', html)
    assert older is not None
    page2 = client.get(older.group(1).replace("&amp;", "&")).text
    ids1 = [int(i) for i in re.findall(r'<tr data-run-id="(\d+)"', html)]
    ids2 = [int(i) for i in re.findall(r'<tr data-run-id="(\d+)"', page2)]
    assert ids1 == sorted(ids1, reverse=True) and max(ids2) < min(ids1)
    assert len(ids1) + len(ids2) == 60 + len(seeded.run_ids)
    newer = re.search(r'href="([^"]+)" id="page-newer"', page2)
    assert newer is not None
    back = client.get(newer.group(1).replace("&amp;", "&")).text
    assert [int(i) for i in re.findall(r'<tr data-run-id="(\d+)"', back)] == ids1
    failed = client.get("/?state=FAILED").text
    assert set(re.findall(r'<tr data-run-id="\d+" data-state="(\w+)"', failed)) == {"FAILED"}
    fragment = client.get("/?state=FAILED&fragment=1").text
    assert 'id="runs-body" data-live' in fragment and "<html" not in fragment


def test_run_page_and_bounded_series(client: TestClient, app_parts: Any) -> None:
    _app, factory, _ = app_parts
    seeded = seed_dashboard(factory)
    run_id = seeded.chart_run
    html = client.get(f"/runs/{run_id}").text
    assert 'id="chart-loss"' in html and 'class="tl-row"' in html and "checkpoints-table" in html
    series = client.get(f"/runs/{run_id}/series?max_points=200").json()
    assert series["points"] == seeded.metric_points
    loss = series["metrics"]["loss"]
    assert 0 < len(loss["x"]) <= 200 and loss["x"] == sorted(loss["x"])
    assert [a["number"] for a in series["attempts"]] == [1, 2, 3]
    assert client.get("/runs/999999").status_code == 404
    assert client.get("/runs/999999/series").status_code == 404
    assert client.get(f"/runs/{run_id}/series?max_points=2").status_code == 422


def test_actions_need_csrf_and_go_through_the_api(client: TestClient, app_parts: Any) -> None:
    _app, factory, _ = app_parts
    seeded = seed_dashboard(factory)
    url = f"/runs/{seeded.cancel_run}/actions/cancel"
    assert client.post(url).status_code == 403  # no token at all
    assert client.post(url, headers={"X-CSRF-Token": "forged" * 8}).status_code == 403
    token = _csrf(client)
    cross = client.post(url, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert cross.status_code == 403
    resp = client.post(url, headers={"X-CSRF-Token": token})
    assert resp.status_code == 200 and resp.json()["ok"] is True
    assert 'data-state="CANCELLED"' in client.get(f"/runs/{seeded.cancel_run}?fragment=1").text
    again = client.post(url, headers={"X-CSRF-Token": token})  # the API refuses: already cancelled
    assert again.status_code >= 400 and again.json()["ok"] is False
    assert (
        client.post(f"/runs/{seeded.cancel_run}/actions/explode", headers={"X-CSRF-Token": token}).status_code
        == 404
    )


def _form(token: str, **overrides: str) -> dict[str, str]:
    return {
        "csrf_token": token,
        "name": "form-run",
        "training.dataset": "data/text.parquet",
        "training.tokenizer_name_or_path": "data/tokenizer",
        "training.training_steps": "100",
        "resources.scheduler": "local",
        "resources.time_limit": "10",
    } | overrides


def test_new_run_form_shows_api_errors_then_creates(client: TestClient) -> None:
    token = _csrf(client, "/runs/new")
    bad = client.post("/runs/new", data=_form(token, **{"training.training_steps": "0"}))
    assert bad.status_code == 422
    assert re.search(r'data-field="training.training_steps">.*?greater than 0', bad.text, re.S)
    assert 'value="form-run"' in bad.text  # input kept
    assert client.post("/runs/new", data=_form("x" * 43)).status_code == 403
    good = client.post("/runs/new", data=_form(token), follow_redirects=False)
    assert good.status_code == 303
    page = client.get(good.headers["location"]).text
    assert "form-run" in page and 'data-state="PENDING"' in page
    dup = client.post("/runs/new", data=_form(token))
    assert dup.status_code == 409
    assert re.search(r'data-field="name">.*?already exists', dup.text, re.S)


def test_static_files_are_served_and_confined(client: TestClient) -> None:
    js = client.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text
    assert client.get("/static/vendor/uplot/LICENSE").status_code == 200
    assert client.get("/static/../routes.py").status_code == 404
    assert client.get("/static/%2e%2e/routes.py").status_code == 404


def test_sign_in_is_required_by_default(tmp_path: Path) -> None:
    app, factory, _ = make_app(tmp_path)
    secret = make_token(factory, "ada")  # the first user: an admin, who may act on the seeded runs
    seeded = seed_dashboard(factory)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        first = client.get("/", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].startswith("/login")
        token = _csrf(client, "/login")
        wrong = client.post("/login", data={"csrf_token": token, "token": "nope", "next": "/"})
        assert wrong.status_code == 401
        ok = client.post(
            "/login", data={"csrf_token": token, "token": secret, "next": "/runs/1"}, follow_redirects=False
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/runs/1"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert secret.lower() not in cookie, "the cookie holds a session id, never the API token"
        assert "signed in as ada" in client.get("/").text
        resp = client.post(f"/runs/{seeded.cancel_run}/actions/cancel", headers={"X-CSRF-Token": token})
        assert resp.status_code == 200, resp.text
        session_id = client.cookies.get(SESSION_COOKIE)
        client.post("/logout", data={"csrf_token": token})
        assert client.get("/", follow_redirects=False).status_code == 303
        client.cookies.set(SESSION_COOKIE, str(session_id))  # a copy of the old cookie: dead
        assert client.get("/", follow_redirects=False).status_code == 303


def test_open_read_only_shows_pages_but_refuses_actions(tmp_path: Path) -> None:
    app, factory, _ = make_app(tmp_path, auth_required=True, open_read_only=True)
    seeded = seed_dashboard(factory)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/").status_code == 200
        assert client.get(f"/runs/{seeded.chart_run}").status_code == 200
        token = _csrf(client)
        resp = client.post(f"/runs/{seeded.cancel_run}/actions/cancel", headers={"X-CSRF-Token": token})
        assert resp.status_code == 401
        assert client.get("/runs/new", follow_redirects=False).status_code == 303


def test_the_run_page_shows_the_exclusion_list_and_escapes_it(client: TestClient, app_parts: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from controller.db.models import NodeExclusion

    _app, factory, _ = app_parts
    run_id = seed_dashboard(factory).chart_run
    assert "exclusions-table" not in client.get(f"/runs/{run_id}").text
    now = datetime.now(UTC)
    with factory() as s:
        for host, expires in (
            ("vm-2", timedelta(hours=6)),
            ("<b>x</b>", timedelta(hours=1)),
            ("vm-9", -timedelta(1)),
        ):
            s.add(NodeExclusion(run_id=run_id, host=host, reason="node_fail", attempt=2, created_at=now,
                                expires_at=now + expires))  # fmt: skip
        s.commit()
    html = client.get(f"/runs/{run_id}").text
    table = html[html.index('id="exclusions-table"') :]
    table = table[: table.index("</table>")]
    assert "vm-2" in table and "node_fail" in table and "vm-9" not in table  # expired: not shown
    assert "<b>x</b>" not in table and "&lt;b&gt;x&lt;/b&gt;" in table
    assert "exclusions-table" in client.get(f"/runs/{run_id}?fragment=1").text


def test_a_hung_event_shows_where_the_stacks_are_and_their_first_lines(
    client: TestClient, app_parts: Any
) -> None:
    from controller.db.models import Event

    _app, factory, _ = app_parts
    run_id = seed_dashboard(factory).chart_run
    excerpt = 'Thread 0x7f01 (most recent call first):\n  File "<script>alert(1)</script>", line 3 in step'
    with factory() as s:
        message = "attempt 2 hung in step; stacks of rank 0 in /x/r0.txt"
        data = {"stacks_path": "/x/r0.txt", "stacks_excerpt": excerpt}
        s.add(Event(run_id=run_id, kind="hung", message=message, data=data))
        s.add(Event(run_id=run_id, kind="warning:x", message="no stacks here",
                    data={"stacks_excerpt": "not a hang: not shown"}))  # fmt: skip
        s.commit()
    html = client.get(f"/runs/{run_id}").text
    events = html[html.index('id="events-table"') :]
    events = events[: events.index("</table>")]
    assert "stacks of rank 0 in /x/r0.txt" in events and "first lines of the stacks" in events
    assert "Thread 0x7f01 (most recent call first):" in events
    assert "<script>alert(1)</script>" not in events and "&lt;script&gt;" in events
    assert "not a hang: not shown" not in events
