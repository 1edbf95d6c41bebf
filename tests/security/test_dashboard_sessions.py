"""Tokens and dashboard sessions (issue "What happens today", under "Tokens and sessions are weak").

* Tokens are listed, revoked and rotated with ``pyrecover token list|revoke|rotate`` and with the
  admin routes ``/api/v1/tokens``; only admins may.
* The dashboard cookie holds a random session id, never the API token; logout deletes the
  session, so a copy of the cookie is dead; revoking the token a browser signed in with ends that
  session too; sessions expire.
* A one-time login link works once.
* Failed sign-ins are logged and, past the limit, refused with 429.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from controller.cli import app as cli_app
from controller.db import make_engine, make_session_factory
from controller.db.models import ApiToken, WebSession
from controller.db.types import utcnow
from controller.services import check_token, hash_token
from controller.services.sessions import issue_login_code
from controller.services.users import get_user
from controller.settings import Settings
from controller.web.security import SESSION_COOKIE
from tests.controller.api.conftest import make_api
from tests.security.conftest import Api

CSRF_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def _csrf(api: Api) -> str:
    match = CSRF_RE.search(api.client.get("/login").text)
    assert match is not None
    return match.group(1)


def _sign_in(api: Api, token: str) -> str:
    """Sign in through the form; returns the session id the cookie got."""
    api.client.cookies.clear()
    csrf = _csrf(api)
    r = api.client.post(
        "/login", data={"csrf_token": csrf, "token": token, "next": "/"}, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    return str(api.client.cookies.get(SESSION_COOKIE))


def _signed_in(api: Api, secret: str) -> bool:
    api.client.cookies.clear()
    api.client.cookies.set(SESSION_COOKIE, secret)
    r = api.client.get("/", follow_redirects=False)
    return r.status_code == 200 and "signed in as" in r.text


def test_the_cookie_holds_a_session_id_that_logout_kills(api: Api) -> None:
    token = api.token("alice")
    secret = _sign_in(api, token)
    assert secret and token not in secret and secret not in token
    with api.factory() as s:
        rows = s.scalars(select(WebSession)).all()
        assert len(rows) == 1 and rows[0].id_hash == hash_token(secret), "only the id's hash is stored"
        assert secret not in str([(r.id_hash, r.user_id) for r in rows])
    assert _signed_in(api, secret)
    csrf = _csrf(api)
    out = api.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert not _signed_in(api, secret), "a copy of the cookie still signs in after logout"
    with api.factory() as s:
        assert s.scalars(select(WebSession)).all() == []
    # The API token itself as the cookie (what the old dashboard stored) signs nobody in.
    assert not _signed_in(api, token)
    api.client.cookies.clear()


def test_revoking_the_token_ends_its_sessions_and_sessions_expire(api: Api) -> None:
    token = api.token("alice")
    first, second = _sign_in(api, token), _sign_in(api, token)
    other = _sign_in(api, api.token("bob"))
    with api.factory() as s:
        token_id = s.scalars(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))).one()
    r = api.client.post(f"/api/v1/tokens/{token_id}/revoke", headers=api.h())
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert not _signed_in(api, first) and not _signed_in(api, second)
    assert _signed_in(api, other)
    with api.factory() as s:
        s.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert not _signed_in(api, other), "an expired session still signs in"
    api.client.cookies.clear()


def test_a_login_link_works_once_and_carries_no_token(api: Api) -> None:
    api.token("alice")
    with api.factory() as s:
        code = issue_login_code(s, get_user(s, "alice"))
        s.commit()
    with api.factory() as s:
        assert check_token(s, code).row is None, "the code is not an API token"
    api.client.cookies.clear()
    first = api.client.get(f"/login/link?code={code}&next=/runs/1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/runs/1"
    assert _signed_in(api, str(api.client.cookies.get(SESSION_COOKIE)))
    api.client.cookies.clear()
    again = api.client.get(f"/login/link?code={code}", follow_redirects=False)
    assert again.status_code == 401 and "used up or expired" in again.text
    evil = api.client.get(f"/login/link?code={code}&next=//evil.example/", follow_redirects=False)
    assert evil.status_code == 401
    with api.factory() as s:
        fresh = issue_login_code(s, get_user(s, "alice"))
        s.commit()
    cross = api.client.get(f"/login/link?code={fresh}", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403, "a link followed from another site must not sign the browser in"
    offsite = api.client.get(f"/login/link?code={fresh}&next=//evil.example/x", follow_redirects=False)
    assert offsite.status_code == 303 and offsite.headers["location"] == "/"
    api.client.cookies.clear()


@pytest.fixture
def strict(tmp_path: Path) -> Any:
    yield from make_api(tmp_path, login_failures_per_minute=3)


def test_failed_sign_ins_are_logged_and_throttled(strict: Api, caplog: pytest.LogCaptureFixture) -> None:
    api = strict
    token = api.token("alice")
    codes = []
    with caplog.at_level(logging.WARNING, logger="pyrecover.auth"):
        for guess in ("pyr_u_guess1", "pyr_u_guess2", "pyr_u_guess3", "pyr_u_guess4", token):
            api.client.cookies.clear()
            csrf = _csrf(api)
            r = api.client.post("/login", data={"csrf_token": csrf, "token": guess}, follow_redirects=False)
            codes.append(r.status_code)
    assert codes == [401, 401, 401, 429, 429], "the right token too waits out the throttle"
    failures = [r for r in caplog.records if r.getMessage().startswith("failed sign-in from")]
    assert len(failures) == 3 and all("testclient" in r.getMessage() for r in failures)
    assert any("sign-in refused" in r.getMessage() for r in caplog.records)
    assert token not in caplog.text and "guess" not in caplog.text, "the log never holds what was typed"
    api.client.cookies.clear()


# ------------------------------------------------------------------ token management
def test_admin_token_routes_list_create_rotate_revoke(api: Api) -> None:
    alice = api.token("alice")
    for who in (alice, None):
        headers = api.h(who) if who else {}
        assert api.client.get("/api/v1/tokens", headers=headers).status_code == (403 if who else 401)
    made = api.client.post(
        "/api/v1/tokens", json={"user": "alice", "label": "ci", "expires_in_s": 3600}, headers=api.h()
    )
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["token"].startswith("pyr_u_") and new["user"] == "alice" and new["label"] == "ci"
    listed = api.client.get("/api/v1/tokens", params={"user": "alice"}, headers=api.h()).json()
    assert [t["label"] for t in listed] == ["alice", "ci"] and all("token" not in t for t in listed)
    rotated = api.client.post(f"/api/v1/tokens/{new['id']}/rotate", headers=api.h())
    assert rotated.status_code == 200
    fresh = rotated.json()
    assert fresh["id"] != new["id"] and fresh["label"] == "ci"
    lifetime = _lifetime(api, fresh["token"])
    assert lifetime == pytest.approx(3600, abs=5), "a rotated token keeps the old one's lifetime"
    assert api.client.get("/api/v1/runs", headers=api.h(new["token"])).status_code == 401
    assert api.client.get("/api/v1/runs", headers=api.h(fresh["token"])).status_code == 200
    again = api.client.post(f"/api/v1/tokens/{new['id']}/rotate", headers=api.h())
    assert again.status_code == 409, "a revoked token cannot be rotated back to life"
    worker_id = _token_id(api, api.attempt(api.create("r")["id"]))
    assert api.client.post(f"/api/v1/tokens/{worker_id}/revoke", headers=api.h()).status_code == 404
    assert api.client.post("/api/v1/tokens/99999/revoke", headers=api.h()).status_code == 404
    assert api.client.post("/api/v1/tokens", json={"user": "nobody"}, headers=api.h()).status_code == 404


def _token_id(api: Api, token: str) -> int:
    with api.factory() as s:
        return int(s.scalars(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))).one())


def _lifetime(api: Api, token: str) -> float:
    with api.factory() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        assert row.expires_at is not None
        return (row.expires_at - row.created_at).total_seconds()


def test_token_list_revoke_rotate_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PYRECOVER_DATABASE_URL", "PYRECOVER_HOST", "PYRECOVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    runner = CliRunner(env={"COLUMNS": "200"})
    assert runner.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
    admin = runner.invoke(cli_app, ["token", "create", "--name", "root"]).output.splitlines()[0]
    alice = runner.invoke(
        cli_app, ["token", "create", "--name", "alice", "--expires-in", "2h"]
    ).output.splitlines()[0]
    listed = runner.invoke(cli_app, ["token", "list"])
    assert listed.exit_code == 0, listed.output
    assert admin not in listed.output and alice not in listed.output, "a listing never shows a token"
    rows = [line.split("│") for line in listed.output.splitlines() if "│" in line]
    table = {cells[2].strip(): [c.strip() for c in cells] for cells in rows if cells[1].strip().isdigit()}
    assert table["root"][3] == "admin" and table["alice"][3] == "user" and table["alice"][6] == "active"
    assert alice.startswith(table["alice"][5].rstrip("…"))
    factory = make_session_factory(make_engine(Settings().database_url))
    rotated = runner.invoke(cli_app, ["token", "rotate", table["alice"][1]])
    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.splitlines()[0]
    with factory() as s:
        assert check_token(s, alice).problem == "revoked"
        fresh = check_token(s, new).row
        assert fresh is not None and fresh.expires_at is not None
        assert (fresh.expires_at - fresh.created_at).total_seconds() == pytest.approx(7200, abs=5)
    revoked = runner.invoke(cli_app, ["token", "revoke", str(fresh.id)])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    with factory() as s:
        assert check_token(s, new).problem == "revoked"
    assert runner.invoke(cli_app, ["token", "revoke", "999"]).exit_code == 1
    assert "does not exist" in runner.invoke(cli_app, ["token", "rotate", "999"]).output
    states = runner.invoke(cli_app, ["token", "list", "--user", "alice"]).output
    assert states.count("revoked") == 2 and "root" not in states
