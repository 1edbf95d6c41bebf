"""Every route against every caller, with the expected status of each cell.

The routes are enumerated from the app (``api_routes``): a route added without a row in ``ROWS``
fails ``test_every_route_has_a_row``. The callers are the run's owner (a ``user``), another user, a
viewer the run is shared with, an admin, the run's worker token, another run's worker token, and
nobody. API calls carry the caller's bearer token; dashboard calls carry the caller's session
cookie (workers cannot sign in: their token goes as a bearer header, which the dashboard ignores).
Dashboard POSTs carry a valid CSRF pair, so a refusal here is about who calls, not about CSRF.

Each cell gets a fresh run owned by the owner, shared with the viewer, in the state the route
needs (a running attempt for actions and reports, FAILED for resume), and a cell that must be
refused must leave the database as it was.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import inspect, text

from controller.db.models import Attempt
from controller.services import create_run, create_user, get_user, issue_user_token, issue_worker_token
from controller.services.sessions import issue_login_code, open_session
from controller.services.shares import share_run
from controller.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from shared.roles import Role
from shared.schemas import RunCreate
from shared.states import AttemptState, RunState
from tests.security.conftest import Api, api_routes, progress, report, run_body

CALLERS = ("owner", "other", "viewer", "admin", "worker", "other_worker", "anonymous")
USERS = {"owner": "olive", "other": "otto", "viewer": "vera", "admin": "ada"}
CSRF = "m" * 43
_names = itertools.count()


@dataclass
class Cell:
    run_id: int
    worker: str
    """The cell run's worker token."""
    n: int
    """Unique per cell (names of created things)."""
    token_id: int = 0
    """A fresh user token of ``other`` (for the token routes)."""


Builder = Callable[["World", Cell, str], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Row:
    codes: tuple[int, ...]
    """In ``CALLERS`` order."""
    state: RunState = RunState.PENDING
    build: Builder | None = None

    def expected(self) -> dict[str, int]:
        assert len(self.codes) == len(CALLERS)
        return dict(zip(CALLERS, self.codes, strict=True))


def _url(path: str, cell: Cell) -> str:
    return path.replace("{run_id}", str(cell.run_id))


def _json(body: Callable[[Cell], Any]) -> Builder:
    def build(world: World, cell: Cell, path: str) -> tuple[str, dict[str, Any]]:
        return _url(path, cell), {"json": body(cell)}

    return build


def _at(url: Callable[[Cell], str], **kwargs: Any) -> Builder:
    def build(world: World, cell: Cell, path: str) -> tuple[str, dict[str, Any]]:
        return url(cell), dict(kwargs)

    return build


def _form(fields: Callable[[World, Cell, str], dict[str, str]]) -> Builder:
    def build(world: World, cell: Cell, path: str) -> tuple[str, dict[str, Any]]:
        return _url(path, cell), {"data": {"csrf_token": CSRF} | fields(world, cell, path)}

    return build


def _login_form(world: World, cell: Cell, caller: str) -> dict[str, str]:
    token = world.tokens.get(caller) or (cell.worker if caller == "worker" else "")
    return {"token": token, "next": "/"}


def _login_link(world: World, cell: Cell, caller: str) -> tuple[str, dict[str, Any]]:
    code = world.code_for(caller) if caller in USERS else "not-a-code"
    return f"/login/link?code={code}", {}


# Expected codes, in CALLERS order: owner, other, viewer, admin, worker, other_worker, anonymous.
READ = (200, 404, 200, 200, 403, 403, 401)
ACT = (200, 404, 403, 200, 403, 403, 401)
ADMIN_ONLY = (403, 403, 403, 200, 403, 403, 401)
EVERYONE = (200,) * 7
ROWS: dict[tuple[str, str], Row] = {
    # ---- the REST API
    ("POST", "/api/v1/runs"): Row(
        (201, 201, 403, 201, 403, 403, 401), build=_json(lambda c: run_body(f"created-{c.n}"))
    ),
    ("GET", "/api/v1/runs"): Row((200, 200, 200, 200, 403, 403, 401)),
    ("GET", "/api/v1/runs/{run_id}"): Row(READ),
    ("POST", "/api/v1/runs/{run_id}/cancel"): Row(ACT),
    ("POST", "/api/v1/runs/{run_id}/resume"): Row(ACT, state=RunState.FAILED),
    ("POST", "/api/v1/runs/{run_id}/actions"): Row(
        ACT, state=RunState.RUNNING, build=_json(lambda c: {"action": "checkpoint"})
    ),
    ("GET", "/api/v1/runs/{run_id}/jobs"): Row(READ),
    ("PATCH", "/api/v1/runs/{run_id}"): Row(ACT, build=_json(lambda c: {"policy": {"backoff_seconds": 7}})),
    ("GET", "/api/v1/runs/{run_id}/jobs/{attempt}/log"): Row(
        READ,
        state=RunState.RUNNING,
        build=_at(lambda c: f"/api/v1/runs/{c.run_id}/jobs/1/log?tail=5"),
    ),
    ("GET", "/api/v1/runs/{run_id}/checkpoints"): Row(READ),
    ("GET", "/api/v1/runs/{run_id}/metrics"): Row(READ),
    ("GET", "/api/v1/runs/{run_id}/events"): Row(READ),
    ("GET", "/api/v1/runs/{run_id}/exclusions"): Row(READ),
    # Clearing is an admin's call: the run's owner may read the list but not empty it.
    ("DELETE", "/api/v1/runs/{run_id}/exclusions"): Row((403, 404, 403, 200, 403, 403, 401)),
    ("GET", "/api/v1/runs/{run_id}/shares"): Row(ACT),
    ("POST", "/api/v1/runs/{run_id}/shares"): Row(
        (201, 404, 403, 201, 403, 403, 401), build=_json(lambda c: {"user": "otto"})
    ),
    ("DELETE", "/api/v1/runs/{run_id}/shares/{user}"): Row(
        (204, 404, 403, 204, 403, 403, 401), build=_at(lambda c: f"/api/v1/runs/{c.run_id}/shares/vera")
    ),
    ("POST", "/api/v1/runs/{run_id}/reports"): Row(
        (403, 403, 403, 403, 200, 403, 401),
        state=RunState.RUNNING,
        build=_json(lambda c: report(progress(0, 1))),
    ),
    ("GET", "/api/v1/users"): Row(ADMIN_ONLY),
    ("POST", "/api/v1/users"): Row(
        (403, 403, 403, 201, 403, 403, 401), build=_json(lambda c: {"name": f"new-{c.n}", "role": "viewer"})
    ),
    ("PATCH", "/api/v1/users/{name}"): Row(
        ADMIN_ONLY, build=_at(lambda c: "/api/v1/users/otto", json={"active_run_limit": 1000})
    ),
    ("GET", "/api/v1/tokens"): Row(ADMIN_ONLY),
    ("POST", "/api/v1/tokens"): Row(
        (403, 403, 403, 201, 403, 403, 401), build=_json(lambda c: {"user": "otto", "label": f"t{c.n}"})
    ),
    ("POST", "/api/v1/tokens/{token_id}/revoke"): Row(
        ADMIN_ONLY, build=_at(lambda c: f"/api/v1/tokens/{c.token_id}/revoke")
    ),
    ("POST", "/api/v1/tokens/{token_id}/rotate"): Row(
        ADMIN_ONLY, build=_at(lambda c: f"/api/v1/tokens/{c.token_id}/rotate")
    ),
    ("GET", "/api/v1/healthz"): Row(EVERYONE),
    ("GET", "/healthz"): Row(EVERYONE),
    ("GET", "/api/v1/metrics"): Row((200, 200, 200, 200, 403, 403, 401)),
    ("GET", "/metrics"): Row((200, 200, 200, 200, 403, 403, 401)),
    # ---- the API's documentation: public, it holds no data
    ("GET", "/openapi.json"): Row(EVERYONE),
    ("GET", "/docs"): Row(EVERYONE),
    ("GET", "/docs/oauth2-redirect"): Row(EVERYONE),
    ("GET", "/redoc"): Row(EVERYONE),
    # ---- the dashboard (303: to the sign-in page)
    ("GET", "/"): Row((200, 200, 200, 200, 303, 303, 303)),
    ("GET", "/runs/new"): Row((200, 200, 403, 200, 303, 303, 303)),
    ("POST", "/runs/new"): Row(
        (303, 303, 403, 303, 303, 303, 303), build=_form(lambda w, c, p: new_run_form(f"web-{c.n}"))
    ),
    ("GET", "/runs/{run_id}"): Row((200, 404, 200, 200, 303, 303, 303)),
    ("GET", "/runs/{run_id}/series"): Row((200, 404, 200, 200, 401, 401, 401)),
    ("GET", "/runs/{run_id}/metrics.csv"): Row((200, 404, 200, 200, 303, 303, 303)),
    ("GET", "/runs/{run_id}/config.yaml"): Row((200, 404, 200, 200, 303, 303, 303)),
    ("POST", "/runs/{run_id}/actions/{action}"): Row(
        (200, 404, 403, 200, 401, 401, 401), build=_at(lambda c: f"/runs/{c.run_id}/actions/cancel")
    ),
    ("GET", "/login"): Row(EVERYONE),
    ("POST", "/login"): Row((303, 303, 303, 303, 401, 401, 401)),
    ("GET", "/login/link"): Row((303, 303, 303, 303, 401, 401, 401)),
    ("POST", "/logout"): Row((303,) * 7, build=_form(lambda w, c, p: {})),
    ("GET", "/static/{path:path}"): Row(EVERYONE, build=_at(lambda c: "/static/dashboard.css")),
}


def new_run_form(name: str) -> dict[str, str]:
    return {
        "name": name,
        "training.dataset": "data/d.parquet",
        "training.tokenizer_name_or_path": "tok",
        "training.training_steps": "100",
        "resources.scheduler": "local",
        "resources.time_limit": "10",
    }


@dataclass
class World:
    api: Api
    tokens: dict[str, str]
    sessions: dict[str, str]
    other_worker: str

    def code_for(self, caller: str) -> str:
        with self.api.factory() as s:
            code = issue_login_code(s, get_user(s, USERS[caller]))
            s.commit()
        return code

    def fresh_session(self, caller: str) -> str:
        with self.api.factory() as s:
            secret = open_session(s, get_user(s, USERS[caller]))
            s.commit()
        return secret

    def cell(self, state: RunState) -> Cell:
        n = next(_names)
        with self.api.factory() as s:
            owner = get_user(s, "olive")
            run = create_run(s, RunCreate.model_validate(run_body(f"cell-{n}")), owner=owner)
            share_run(s, run, "vera", by="olive", by_id=owner.id)
            if state is not RunState.PENDING:
                ended = state is RunState.FAILED
                attempt_state = AttemptState.ENDED if ended else AttemptState.RUNNING
                s.add(
                    Attempt(run_id=run.id, number=1, backend="local", job_name=f"c{n}", state=attempt_state)
                )
                run.state = state
            worker = issue_worker_token(s, run.id)
            _token, row = issue_user_token(s, get_user(s, "otto"), label=f"cell-{n}")
            s.commit()
            return Cell(run_id=run.id, worker=worker, n=n, token_id=row.id)

    def snapshot(self) -> dict[str, Any]:
        """Every row of every table but the ones a request may touch without changing anything
        (dashboard sessions and login codes, which signing in creates)."""
        with self.api.factory() as s:
            tables = [
                t for t in inspect(s.get_bind()).get_table_names() if t not in ("web_sessions", "login_codes")
            ]
            return {t: sorted(map(str, s.execute(text(f'SELECT * FROM "{t}"')).all())) for t in tables}


@pytest.fixture
def world(api: Api) -> Iterator[World]:
    """ada (admin), olive (user, owns the runs), otto (user), vera (viewer), each with a token and a
    dashboard session (the ``api`` fixture's own first user, an admin too, stays out of it)."""
    roles = {"ada": Role.ADMIN, "olive": Role.USER, "otto": Role.USER, "vera": Role.VIEWER}
    with api.factory() as s:
        tokens, sessions = {}, {}
        for caller, name in USERS.items():
            user = create_user(s, name, role=roles[name])
            tokens[caller] = issue_user_token(s, user, label="matrix")[0]
            sessions[caller] = open_session(s, user)
        s.commit()
    world = World(api, tokens, sessions, other_worker="")
    world.other_worker = world.cell(RunState.RUNNING).worker
    yield world


def _credentials(world: World, cell: Cell, caller: str, path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, cookies) a caller sends to ``path``."""
    dashboard = not path.startswith("/api/") and path not in ("/healthz", "/metrics")
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {CSRF_COOKIE: CSRF}
    if dashboard:
        headers[CSRF_HEADER] = CSRF
        if caller in USERS:
            # Logging out ends the session it names: that cell gets a session of its own.
            secret = world.fresh_session(caller) if path == "/logout" else world.sessions[caller]
            cookies[SESSION_COOKIE] = secret
    token = {"worker": cell.worker, "other_worker": world.other_worker}.get(caller) or world.tokens.get(
        caller
    )
    if token is not None and (not dashboard or caller in ("worker", "other_worker")):
        headers["Authorization"] = f"Bearer {token}"
    return headers, cookies


def _request(world: World, row: Row, method: str, path: str, caller: str) -> tuple[int, str]:
    cell = world.cell(row.state)
    if path == "/login/link":
        url, kwargs = _login_link(world, cell, caller)
    elif (method, path) == ("POST", "/login"):
        url, kwargs = "/login", {"data": {"csrf_token": CSRF} | _login_form(world, cell, caller)}
    elif row.build is not None:
        url, kwargs = row.build(world, cell, path)
    else:
        url, kwargs = _url(path, cell), {}
    headers, cookies = _credentials(world, cell, caller, path)
    client = world.api.client
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    before = world.snapshot()
    r = client.request(method, url, headers=headers, follow_redirects=False, **kwargs)
    if r.status_code >= 400 or (r.status_code == 303 and "/login" in r.headers.get("location", "")):
        assert world.snapshot() == before, (
            f"{caller} {method} {url}: refused ({r.status_code}) yet changed rows"
        )
    client.cookies.clear()
    return r.status_code, r.text[:200]


def test_every_route_has_a_row(api: Api) -> None:
    routes = set(api_routes(api.client.app))  # type: ignore[arg-type]
    missing = sorted(routes - set(ROWS))
    assert not missing, f"routes without a row in the access matrix: {missing}"
    assert not set(ROWS) - routes, f"rows for routes that no longer exist: {sorted(set(ROWS) - routes)}"


def test_the_access_matrix(world: World) -> None:
    wrong = []
    tally: Counter[int] = Counter()
    for (method, path), row in sorted(ROWS.items()):
        for caller, expected in row.expected().items():
            got, body = _request(world, row, method, path, caller)
            tally[got] += 1
            if got != expected:
                wrong.append(f"{method} {path} as {caller}: {got}, expected {expected} ({body})")
    assert not wrong, "\n".join(wrong)
    cells = sum(tally.values())
    assert cells == len(ROWS) * len(CALLERS)
    codes = dict(sorted(tally.items()))
    print(f"\naccess matrix: {len(ROWS)} routes x {len(CALLERS)} callers = {cells} cells, codes {codes}")
