"""Every integer in a URL or a query is bounded: no 500 anywhere, the dashboard included (issue
"What happens today": ``/runs/9223372036854775808``, ``/?before=9223372036854775808`` and
``/runs/99999999999999999999/series`` answered 500).

Every route the app has (enumerated) gets every hostile value in each path parameter, and the
integer query parameters get them too, as an admin signed in both ways (so that the request
reaches as far as it can), on SQLite and on PostgreSQL (whose INTEGER is 32-bit)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controller.api import create_app
from controller.db import make_engine, make_session_factory, upgrade_database
from controller.services import create_user_token, get_user
from controller.services.sessions import open_session
from controller.settings import Settings
from controller.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from tests.controller.dbfixtures import pg_url
from tests.security.conftest import api_routes

__all__ = ["pg_url"]

HOSTILE = (
    "9223372036854775808",
    "99999999999999999999",
    "2147483648",
    "-9223372036854775809",
    "-1",
    "0",
    "1e9",
    "0x10",
    "\uff11\uff12",  # fullwidth digits, which Python's int() would accept
    "%00",
    "1%0a2",
)
INT_QUERIES = ("before", "after", "limit", "offset", "max_points")
CSRF = "b" * 43


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def admin_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    settings = Settings(data_dir=tmp_path, database_url=url, run_reconciler=False)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with factory() as s:
        token = create_user_token(s, "ada")
        secret = open_session(s, get_user(s, "ada"))
        s.commit()
    app = create_app(settings, session_factory=factory)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
        client.cookies.set(SESSION_COOKIE, secret)
        client.cookies.set(CSRF_COOKIE, CSRF)
        yield client, token
    engine.dispose()


def test_the_urls_that_answered_500(admin_client: tuple[TestClient, str]) -> None:
    client, _token = admin_client
    for url in (
        "/runs/9223372036854775808",
        "/?before=9223372036854775808",
        "/runs/99999999999999999999/series",
    ):
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code, r.text[:200])
    assert client.get("/runs/2147483647").status_code == 404  # the largest id is merely absent


def test_no_route_answers_5xx_to_a_hostile_number(admin_client: tuple[TestClient, str]) -> None:
    client, token = admin_client
    routes = api_routes(client.app)  # type: ignore[arg-type]
    codes: Counter[int] = Counter()
    bad = []
    for method, path in routes:
        params = re.findall(r"\{(\w+)(?::path)?\}", path)
        urls = []
        for value in HOSTILE:
            url = path
            for name in params:
                url = re.sub(r"\{" + name + r"(?::path)?\}", value, url)
            urls.append(url)
            urls.append(f"{url}?" + "&".join(f"{q}={value}" for q in INT_QUERIES))
        for url in urls:
            headers = {"Authorization": f"Bearer {token}", CSRF_HEADER: CSRF}
            if not url.startswith("/api/") and not url.startswith(("/healthz", "/metrics")):
                headers.pop("Authorization")  # the dashboard: the session cookie
            r = client.request(
                method, url, headers=headers, data={"csrf_token": CSRF}, follow_redirects=False
            )
            codes[r.status_code] += 1
            if r.status_code >= 500:
                bad.append(f"{method} {url}: {r.status_code} {r.text[:120]}")
    assert not bad, "\n".join(bad)
    tally = dict(sorted(codes.items()))
    print(f"\nhostile numbers: {sum(codes.values())} requests over {len(routes)} routes, codes {tally}")
