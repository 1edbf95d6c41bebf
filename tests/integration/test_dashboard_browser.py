"""The dashboard in a real browser: Playwright driving Debian's Chromium against the real app.

The app runs under uvicorn in a thread on a free loopback port, over a temporary SQLite DB with
the reconciler off, seeded with runs in every state, attempts, checkpoints and metric points. Auth
is on, as by default: each page signs in through a one-time link (``/login/link``), as a user of
``pyrecover demo`` does, as the admin who owns the seeded runs.
Skipped when ``/usr/bin/chromium`` is missing (``apt-get install chromium``; CI turns the skip
into a failure). Never downloads a browser. Screenshots go to ``$PYRECOVER_ARTIFACTS_DIR``
(default ``artifacts/dashboard``); with ``PYRECOVER_UPDATE_SCREENSHOTS=1`` the two README
screenshots in ``docs/screenshots/`` are refreshed too.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PYRECOVER_ARTIFACTS_DIR", REPO / "artifacts" / "dashboard"))
UPDATE_SCREENSHOTS = os.environ.get("PYRECOVER_UPDATE_SCREENSHOTS") == "1"
WAIT_MS = 15_000  # generous upper bound for a UI change to appear; never a timing assertion


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    seeded: Any
    factory: Any
    token: str
    """The admin's API token, for the REST calls the tests compare the pages with."""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def login_link(self) -> str:
        from tests.controller.web.web_seed import login_code

        return f"{self.url}/login/link?code={login_code(self.factory, 'ada')}"


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for start-up (≤ 20 s), not a timing assertion
        if server.started:
            break
        time.sleep(0.1)
    else:
        server.should_exit = True
        raise RuntimeError("uvicorn did not start within 20 s")
    return server, thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install -y chromium (CI installs it)")
    from tests.controller.web.web_seed import make_app, make_token, seed_dashboard

    port = _free_port()
    app, factory, _settings = make_app(tmp_path_factory.mktemp("dashboard"), port=port)
    token = make_token(factory, "ada")  # the first user: an admin, owner of the seeded runs
    seeded = seed_dashboard(factory)
    server, thread = _serve(app, port)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", seeded=seeded, factory=factory, token=token)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install -y chromium (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.login_link())  # a one-time code, exchanged for a session cookie
    assert "signed in as ada" in page.locator("header .who").inner_text()
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _shot(page: Any, name: str, *, readme: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=False)
    if readme and UPDATE_SCREENSHOTS:
        target = REPO / "docs" / "screenshots" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=False)


def test_runs_page_lists_runs_in_every_state(server: Server, page: Any) -> None:
    page.goto(server.url + "/")
    for state in ("PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"):
        row = page.locator(f'#runs-table tr[data-state="{state}"]').first
        assert row.locator(".badge").inner_text() == state
    running = page.locator(f'#runs-table tr[data-run-id="{server.seeded.chart_run}"]')
    assert "deadline_stop ×2" in running.inner_text()
    _shot(page, "runs.png", readme=True)
    # the state filter narrows the list to that state only
    page.locator('#state-filters a[data-state="FAILED"]').click()
    page.wait_for_url("**state=FAILED**")
    states = page.locator("#runs-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert states and set(states) == {"FAILED"}


def test_run_page_chart_draws_the_api_series(server: Server, page: Any) -> None:
    run_id = server.seeded.chart_run
    page.goto(f"{server.url}/runs/{run_id}")
    page.wait_for_function("() => window.pyrecover && window.pyrecover.charts.loss !== undefined")
    drawn = page.evaluate("() => window.pyrecover.charts.loss.data")
    url = page.evaluate("() => document.getElementById('charts').dataset.seriesUrl")
    series = page.evaluate("async (u) => (await fetch(u)).json()", url)  # with the page's session
    assert drawn == [series["metrics"]["loss"]["x"], series["metrics"]["loss"]["y"]]
    assert series["points"] == server.seeded.metric_points
    assert 100 < len(drawn[0]) <= 1000  # downsampled from every point
    # every drawn point is one the REST API reports for this run
    metrics_url = f"{server.url}/api/v1/runs/{run_id}/metrics"
    api = httpx.get(metrics_url, params={"limit": 100_000}, headers=server.auth, timeout=30)
    api.raise_for_status()
    reported = {(p["step"], p["loss"]) for p in api.json()["items"]}
    assert api.json()["total"] == server.seeded.metric_points
    assert set(zip(*drawn, strict=True)) <= reported
    # the canvas really has ink on it (not a blank box)
    inked = page.evaluate(
        """() => { const c = document.querySelector('#chart-loss canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )
    assert inked > 1000
    boundaries = page.evaluate("() => window.pyrecover.series.attempts.map(a => a.number)")
    assert boundaries == [1, 2, 3]
    assert page.locator("#timeline .tl-row").count() == 3  # one timeline row per attempt
    _shot(page, "run.png", readme=True)


def test_cancel_changes_the_state_without_a_reload(server: Server, page: Any) -> None:
    run_id = server.seeded.cancel_run
    page.goto(f"{server.url}/runs/{run_id}")
    page.evaluate("() => { window.__sameDocument = true; }")
    page.on("dialog", lambda dialog: dialog.accept())
    assert page.locator("#run-state").get_attribute("data-state") in ("PENDING", "QUEUED")
    page.locator('button[data-action="cancel"]').click()
    page.wait_for_selector('#run-state[data-state="CANCELLED"]')
    assert page.evaluate("() => window.__sameDocument === true")  # no navigation happened
    assert page.locator('button[data-action="resume"]').is_visible()
    _shot(page, "run-cancelled.png")


def test_new_run_form_shows_the_api_validation_errors(server: Server, page: Any) -> None:
    page.goto(server.url + "/runs/new")
    page.fill('input[name="name"]', "browser-run")
    page.fill('input[name="training.dataset"]', "data/text.parquet")
    page.fill('input[name="training.tokenizer_name_or_path"]', "data/tokenizer")
    page.fill('input[name="training.training_steps"]', "0")
    page.fill('input[name="resources.time_limit"]', "10")
    page.click("#submit-run")
    error = page.locator('[data-field="training.training_steps"] .field-error')
    assert "greater than 0" in error.inner_text()
    assert page.input_value('input[name="name"]') == "browser-run"  # what was typed is kept
    _shot(page, "new-run-invalid.png")
    page.fill('input[name="training.training_steps"]', "100")
    page.click("#submit-run")
    page.wait_for_url("**/runs/*")
    assert page.locator("#run-state").get_attribute("data-state") == "PENDING"
