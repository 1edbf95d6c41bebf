"""Tokens against every route the app has, enumerated from its router (a route added later is
attacked without anyone remembering to list it): missing, malformed, unknown, tampered, expired,
revoked and other-run tokens are refused and change nothing. Also: only hashes are stored, the
comparison is ``hmac.compare_digest``, worker tokens expire after their attempt, and
``pyrecover token create --expires-in`` works.

``tests/controller/api/test_auth.py`` has the hand-written matrix of the original endpoints; this
module is the exhaustive, route-enumerated version plus expiry and storage.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from controller.cli import app as cli_app
from controller.db import make_engine, make_session_factory
from controller.db.models import ApiToken, Attempt
from controller.db.types import utcnow
from controller.services import (
    authenticate_token,
    check_token,
    create_user_token,
    hash_token,
    issue_worker_token,
    parse_ttl,
    refresh_worker_token,
    revoke_token,
)
from controller.services import tokens as token_service
from controller.settings import Settings
from controller.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from shared.states import AttemptState
from tests.security.conftest import Api, api_routes, progress, report, run_body

# A minimal valid body per operation that takes one, so that a refused request is refused for its
# token and not for its body. A new body-taking route without an entry gets "{}": auth is checked
# before the body is validated, so it is still attacked.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/runs"): run_body("attacker-run"),
    ("POST", "/api/v1/runs/{run_id}/actions"): {"action": "stop"},
    ("POST", "/api/v1/runs/{run_id}/reports"): report(progress(100, 1)),
}
WORKER_ROUTE = ("POST", "/api/v1/runs/{run_id}/reports")
PUBLIC = {("GET", "/healthz"), ("GET", "/api/v1/healthz")}
"""Liveness probes answer without a token (they reveal nothing but "up")."""


def _api_calls(api: Api, run_id: int) -> list[tuple[str, str, str, Any]]:
    """(method, template, url, body) for every API route that needs a token."""
    out = []
    for method, path in api_routes(api.client.app):  # type: ignore[arg-type]
        if not (path.startswith("/api/") or path == "/metrics") or (method, path) in PUBLIC:
            continue
        out.append((method, path, path.replace("{run_id}", str(run_id)), BODIES.get((method, path), {})))
    return out


def _snapshot(api: Api) -> dict[str, Any]:
    """Every row of every table, as text: "nothing changed" means this is equal afterwards."""
    with api.factory() as s:
        bind = s.get_bind()
        tables = inspect(bind).get_table_names()
        return {t: sorted(map(str, s.execute(text(f'SELECT * FROM "{t}"')).all())) for t in tables}


def _set_expiry(api: Api, token: str, *, seconds_from_now: float) -> None:
    with api.factory() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        row.expires_at = utcnow() + timedelta(seconds=seconds_from_now)
        s.commit()


def _revoke(api: Api, token: str) -> None:
    with api.factory() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
        revoke_token(s, row.id)
        s.commit()


@pytest.fixture
def world(api: Api) -> Iterator[dict[str, Any]]:
    """Two runs with running attempts, and tokens in every state."""
    run_a = api.create("run-a")["id"]
    run_b = api.create("run-b")["id"]
    worker_a = api.attempt(run_a, state=AttemptState.RUNNING)
    worker_b = api.attempt(run_b, state=AttemptState.RUNNING)
    expired_user, revoked_user = api.token("expired"), api.token("revoked")
    expired_worker, revoked_worker = issue_token(api, run_a), issue_token(api, run_a)
    _set_expiry(api, expired_user, seconds_from_now=-1)
    _set_expiry(api, expired_worker, seconds_from_now=-1)
    _revoke(api, revoked_user)
    _revoke(api, revoked_worker)
    yield {
        "run_a": run_a,
        "run_b": run_b,
        "worker_a": worker_a,
        "worker_b": worker_b,
        "expired_user": expired_user,
        "revoked_user": revoked_user,
        "expired_worker": expired_worker,
        "revoked_worker": revoked_worker,
    }


def issue_token(api: Api, run_id: int) -> str:
    with api.factory() as s:
        token = issue_worker_token(s, run_id)
        s.commit()
    return token


def _bad_headers(api: Api, w: dict[str, Any]) -> dict[str, dict[str, str]]:
    user = api.user
    return {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "scheme only": {"Authorization": "Bearer"},
        "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "token scheme": {"Authorization": f"Token {user}"},
        "no scheme": {"Authorization": user},
        "unknown token": {"Authorization": "Bearer pyr_u_" + "A" * 43},
        "prefix only": {"Authorization": "Bearer pyr_u_"},
        "tampered last char": {"Authorization": f"Bearer {user[:-1]}{'B' if user[-1] != 'B' else 'C'}"},
        "truncated": {"Authorization": f"Bearer {user[:-4]}"},
        "trailing junk": {"Authorization": f"Bearer {user}x"},
        "upper-cased": {"Authorization": f"Bearer {user.upper()}"},
        "two tokens": {"Authorization": f"Bearer {user} {user}"},
        "huge": {"Authorization": "Bearer " + "x" * 100_000},
        "sql": {"Authorization": "Bearer ' OR '1'='1"},
        "expired user": {"Authorization": f"Bearer {w['expired_user']}"},
        "revoked user": {"Authorization": f"Bearer {w['revoked_user']}"},
        "expired worker": {"Authorization": f"Bearer {w['expired_worker']}"},
        "revoked worker": {"Authorization": f"Bearer {w['revoked_worker']}"},
    }


def test_every_route_refuses_every_bad_token_and_nothing_changes(api: Api, world: dict[str, Any]) -> None:
    calls = _api_calls(api, world["run_a"])
    assert {(m, p) for m, p, _, _ in calls} >= {WORKER_ROUTE, ("POST", "/api/v1/runs")}
    before = _snapshot(api)
    trials = 0
    for label, headers in _bad_headers(api, world).items():
        for method, _path, url, body in calls:
            r = api.client.request(method, url, json=body, headers=headers)
            trials += 1
            assert r.status_code == 401, (label, method, url, r.text)
            assert r.headers["www-authenticate"] == "Bearer", (label, url)
            assert "detail" in r.json()
    assert _snapshot(api) == before, "a refused request changed the database"
    assert trials >= 19 * 12
    print(f"\nbad tokens: {trials} requests refused, database unchanged")


def test_the_refusal_says_what_is_wrong(api: Api, world: dict[str, Any]) -> None:
    def detail(token: str) -> str:
        r = api.client.get("/api/v1/runs", headers=api.h(token))
        assert r.status_code == 401
        return str(r.json()["detail"])

    assert re.search(r"expired at \d{4}-\d\d-\d\d .*pyrecover token create", detail(world["expired_user"]))
    assert "revoked" in detail(world["revoked_user"])
    assert "does not know" in detail("pyr_u_nope")
    missing = api.client.get("/api/v1/runs")
    assert "bearer token is required" in missing.json()["detail"]


def test_worker_tokens_reach_only_their_own_runs_reports(api: Api, world: dict[str, Any]) -> None:
    before = _snapshot(api)
    trials = 0
    for token in (world["worker_a"], world["worker_b"]):
        for method, path, url, body in _api_calls(api, world["run_a"]):
            own = token == world["worker_a"] and (method, path) == WORKER_ROUTE
            if own:
                continue
            r = api.client.request(method, url, json=body, headers=api.h(token))
            trials += 1
            assert r.status_code == 403, (method, url, r.text)
    assert _snapshot(api) == before
    ok = api.client.post(
        f"/api/v1/runs/{world['run_a']}/reports",
        json=report(progress(0, 1)),
        headers=api.h(world["worker_a"]),
    )
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    print(f"\nworker tokens off their route: {trials} requests refused with 403")


def test_dashboard_actions_refuse_bad_session_tokens(api: Api, world: dict[str, Any]) -> None:
    """The dashboard's POST routes take the token from a session cookie (plus CSRF): a cookie with a
    bad, expired, revoked or worker token acts as nobody."""
    web_posts = [(m, p) for m, p in api_routes(api.client.app) if m == "POST" and not p.startswith("/api/")]  # type: ignore[arg-type]
    assert web_posts, "the dashboard has no POST routes?"
    csrf = "c" * 43
    before = _snapshot(api)
    for token in ("nope", world["expired_user"], world["revoked_user"], world["worker_a"]):
        for _method, path in web_posts:
            if path == "/login":
                continue  # logging in is how a session starts: tested below
            url = path.replace("{run_id}", str(world["run_a"])).replace("{action}", "cancel")
            _cookies(api, {SESSION_COOKIE: token, CSRF_COOKIE: csrf})
            r = api.client.post(
                url,
                data={"csrf_token": csrf, "name": "web-attack"},
                headers={CSRF_HEADER: csrf},
                follow_redirects=False,
            )
            assert r.status_code in (303, 401, 403) or path == "/logout", (path, r.status_code, r.text[:200])
            if r.status_code == 303:
                assert path == "/logout" or "/login" in r.headers["location"], (path, r.headers["location"])
        _cookies(api, {CSRF_COOKIE: csrf})
        login = api.client.post(
            "/login",
            data={"csrf_token": csrf, "token": token},
            headers={CSRF_HEADER: csrf},
            follow_redirects=False,
        )
        assert login.status_code == 401, (token[:8], login.status_code)
    api.client.cookies.clear()
    assert _snapshot(api) == before


def _cookies(api: Api, cookies: dict[str, str]) -> None:
    api.client.cookies.clear()
    for name, value in cookies.items():
        api.client.cookies.set(name, value)


def test_only_hashes_are_stored(api: Api, world: dict[str, Any]) -> None:
    plaintexts = [api.user, *(v for k, v in world.items() if isinstance(v, str))]
    dump = "\n".join("\n".join(rows) for rows in _snapshot(api).values())
    for token in plaintexts:
        secret = token.split("_", 2)[-1]
        assert secret[:12] not in dump, "a token (or a part past its prefix) is stored in clear"
        assert hash_token(token) in dump
    with api.factory() as s:
        rows = s.scalars(select(ApiToken)).all()
    assert all(re.fullmatch(r"[0-9a-f]{64}", r.token_hash) for r in rows)
    assert all(len(r.prefix) <= 10 for r in rows), "the displayable prefix stays short"


def test_tokens_are_random_and_compared_in_constant_time(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    with api.factory() as s:
        tokens = {create_user_token(s, f"u{i}") for i in range(200)}
        s.commit()
    assert len(tokens) == 200
    assert all(len(t) >= len("pyr_u_") + 43 for t in tokens), "at least 32 random bytes (urlsafe base64)"
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(token_service.hmac, "compare_digest", spy)
    token = next(iter(tokens))
    assert api.client.get("/api/v1/runs", headers=api.h(token)).status_code == 200
    assert calls == [(hash_token(token), hash_token(token))], (
        "the stored hash is compared with compare_digest"
    )
    source = Path(token_service.__file__).read_text()
    assert "secrets.token_urlsafe(32)" in source
    # The only == on a hash is the indexed SQL lookup of the presented token's *hash*: an attacker
    # cannot steer SHA-256 prefixes, so its timing tells nothing about stored tokens.
    assert source.count("token_hash ==") == 1 and "ApiToken.token_hash == digest" in source


def test_worker_tokens_expire_after_the_attempt(api: Api) -> None:
    run_id = api.create("expiring")["id"]  # time_limit 1m
    token = api.attempt(run_id, state=AttemptState.PENDING)
    queue, grace = token_service.WORKER_QUEUE_ALLOWANCE_S, token_service.WORKER_GRACE_S
    with api.factory() as s:
        row = _row(s, token)
        assert row.expires_at is not None
        lifetime = (row.expires_at - row.created_at).total_seconds()
    assert lifetime == pytest.approx(queue + 60 + grace, abs=5), "queue allowance + walltime + grace"
    r = api.client.post(f"/api/v1/runs/{run_id}/reports", json=report(progress(0, 1)), headers=api.h(token))
    assert r.status_code == 200
    with api.factory() as s:
        row = _row(s, token)
        first = row.expires_at
        assert first is not None
        left = (first - utcnow()).total_seconds()
        assert 60 + grace - 30 < left <= 60 + grace, "the first report shrinks it to walltime + grace"
        assert check_token(s, token, now=first + timedelta(seconds=1)).problem == "expired"
        assert authenticate_token(s, token, now=first - timedelta(seconds=1)) is not None
        # A worker still reporting later (an admin extended its time limit) is never locked out ...
        later = utcnow() + timedelta(seconds=grace)
        refresh_worker_token(s, row.id, run_id, 1, now=later)
        assert row.expires_at == later + timedelta(seconds=60 + grace)
        # ... but once its attempt has ended, reports no longer extend the token.
        attempt = s.scalars(select(Attempt).where(Attempt.run_id == run_id)).one()
        attempt.state = AttemptState.ENDED
        extended = row.expires_at
        refresh_worker_token(s, row.id, run_id, 1, now=later + timedelta(hours=5))
        assert row.expires_at == extended
        s.rollback()
    _set_expiry(api, token, seconds_from_now=-1)
    late = api.client.post(
        f"/api/v1/runs/{run_id}/reports", json=report(progress(1, 2)), headers=api.h(token)
    )
    assert late.status_code == 401 and "expired" in late.json()["detail"]


def test_token_create_expires_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PYRECOVER_DATABASE_URL", "PYRECOVER_HOST", "PYRECOVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
    created = runner.invoke(cli_app, ["token", "create", "--name", "ci", "--expires-in", "30d"])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[0]
    factory = make_session_factory(make_engine(Settings().database_url))
    with factory() as s:
        row = _row(s, token)
        assert row.expires_at is not None
        assert (row.expires_at - utcnow()).total_seconds() == pytest.approx(30 * 86400, abs=60)
        assert check_token(s, token, now=utcnow() + timedelta(days=31)).problem == "expired"
    forever = runner.invoke(cli_app, ["token", "create", "--name", "forever"])
    with factory() as s:
        assert _row(s, forever.output.strip().splitlines()[0]).expires_at is None
    for bad in ("30", "-1d", "0d", "1y", "30 days", "100000w"):
        refused = runner.invoke(cli_app, ["token", "create", "--name", "x", "--expires-in", bad])
        assert refused.exit_code == 1 and "--expires-in" in refused.output, (bad, refused.output)


def _row(s: Session, token: str) -> ApiToken:
    return s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("90m", 5400), ("12h", 43200), ("2w", 1209600)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds
