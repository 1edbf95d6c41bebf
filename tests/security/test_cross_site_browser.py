"""A hostile site in the real Chromium cannot change a run (issue: "A cross-site form POST to
``/api/v1/runs/1/cancel`` succeeded").

A page on another site (``127.0.0.2``, a different loopback address: another site to the browser)
auto-submits forms and fires a ``no-cors`` fetch at the controller's cancel routes, the dashboard's
and the API's, while the same browser is signed in to the dashboard; and once more against a
controller with auth off (``--insecure-no-auth``), where no cookie is even needed. Every request
arrives, every one is refused, and the run stays as it was. Skipped without Chromium (CI installs
it and turns the skip into a failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller.db.models import Run
from controller.services import create_run, get_user
from controller.services.sessions import issue_login_code
from shared.schemas import RunCreate
from tests.integration.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS
from tests.security.conftest import Live, run_body, serve_live

pytestmark = pytest.mark.integration
EVIL_HOST = "127.0.0.2"
WAIT_S = 30  # an upper bound for the forged requests to arrive, never a timing claim


def _evil_page(target: str, run_id: int) -> bytes:
    return f"""<!doctype html><html><body>
<iframe name="a"></iframe><iframe name="b"></iframe>
<form id="web" method="post" action="{target}/runs/{run_id}/actions/cancel" target="a">
  <input name="csrf_token" value="guessed"></form>
<form id="api" method="post" action="{target}/api/v1/runs/{run_id}/cancel" target="b">
  <input name="x" value="1"></form>
<script>
  document.getElementById("web").submit();
  document.getElementById("api").submit();
  fetch("{target}/api/v1/runs/{run_id}/cancel", {{method: "POST", mode: "no-cors", credentials: "include"}});
</script></body></html>""".encode()


class EvilSite:
    def __init__(self, page: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((EVIL_HOST, 0), Handler)
        self.url = f"http://{EVIL_HOST}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def _run(live: Live) -> int:
    with live.factory() as s:
        run = create_run(s, RunCreate.model_validate(run_body("victim")), owner=get_user(s, "root"))
        s.commit()
        return run.id


def _state(live: Live, run_id: int) -> tuple[Any, ...]:
    with live.factory() as s:
        run = s.scalar(select(Run).where(Run.id == run_id))
        assert run is not None
        return (run.state, run.cancel_requested)


def _attack(browser: Any, live: Live, run_id: int, *, sign_in: bool) -> list[tuple[str, int]]:
    context = browser.new_context()
    page = context.new_page()
    try:
        if sign_in:
            with live.factory() as s:
                code = issue_login_code(s, get_user(s, "root"))
                s.commit()
            page.goto(f"{live.url}/login/link?code={code}")
            assert "signed in as root" in page.content()
        seen: list[tuple[str, int]] = []

        def record(response: Any) -> None:
            if response.url.startswith(live.url) and response.request.method == "POST":
                seen.append((response.url, response.status))

        page.on("response", record)
        evil = EvilSite(_evil_page(live.url, run_id))
        try:
            page.goto(evil.url)
            end = time.monotonic() + WAIT_S
            while len(seen) < 3 and time.monotonic() < end:
                page.wait_for_timeout(100)
        finally:
            evil.close()
        return seen
    finally:
        context.close()


@pytest.fixture
def signed_in_controller(tmp_path: Path) -> Iterator[Live]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install -y chromium (CI installs it)")
    yield from serve_live(tmp_path)


@pytest.fixture
def open_controller(tmp_path: Path) -> Iterator[Live]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install -y chromium (CI installs it)")
    yield from serve_live(tmp_path, auth_required=False)


def test_a_hostile_page_cannot_cancel_a_signed_in_users_run(browser: Any, signed_in_controller: Live) -> None:
    live = signed_in_controller
    run_id = _run(live)
    before = _state(live, run_id)
    seen = _attack(browser, live, run_id, sign_in=True)
    # The no-cors fetch's response is opaque to the page, and may not be reported; the two forms are.
    assert len(seen) >= 2, seen
    assert all(status == 403 for _, status in seen), seen
    assert _state(live, run_id) == before
    print(f"\ncross-site POSTs from a signed-in browser: {len(seen)} sent, {len(seen)} refused (403)")


def test_a_hostile_page_cannot_cancel_a_run_with_auth_off(browser: Any, open_controller: Live) -> None:
    live = open_controller
    run_id = _run(live)
    before = _state(live, run_id)
    seen = _attack(browser, live, run_id, sign_in=False)
    assert len(seen) >= 2, seen
    assert all(status == 403 for _, status in seen), seen
    assert _state(live, run_id) == before
    print(f"\ncross-site POSTs with auth off: {len(seen)} sent, {len(seen)} refused (403)")
