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


# ---- the run page tells the truth (issue: retention, legends, markers, MFU, summary, contrast) ----

CONTRAST_JS = """(sel) => {
  // WCAG contrast of an element's text colour against the background it sits on
  const lum = (rgb) => { const [r, g, b] = rgb.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(v => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const el = document.querySelector(sel);
  const fg = lum(getComputedStyle(el).color);
  const bars = [el.parentElement.querySelector('.bar'), el.parentElement];
  return bars.map(b => { const bg = lum(getComputedStyle(b).backgroundColor);
    return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05); });
}"""


def test_run_page_marks_deleted_checkpoints_and_shows_last_values(server: Server, page: Any) -> None:
    from tests.controller.web.web_seed import DELETED_STEPS

    run_id = server.seeded.chart_run
    page.goto(f"{server.url}/runs/{run_id}")
    rows = page.locator("#checkpoints-table tbody tr")
    marks = rows.evaluate_all("rs => rs.map(r => [Number(r.dataset.step), r.dataset.onDisk])")
    assert {s for s, on in marks if on == "false"} == set(DELETED_STEPS)
    for step in DELETED_STEPS:
        assert page.locator(f'#checkpoints-table tr[data-step="{step}"] .disk.off').inner_text() == "deleted"
    assert page.locator("#checkpoints-count").inner_text() == "2 of 5 on disk"
    # the API agrees, row for row
    api = httpx.get(f"{server.url}/api/v1/runs/{run_id}/checkpoints", headers=server.auth, timeout=30).json()
    assert {c["step"]: c["on_disk"] for c in api["items"]} == {s: on == "true" for s, on in marks}
    # legends read the last point before any hover, never "--"
    page.wait_for_function("() => window.pyrecover && window.pyrecover.charts.loss !== undefined")
    page.mouse.move(5, 5)  # well away from every chart
    legend = page.locator("#chart-loss .u-legend .u-series").nth(1).locator(".u-value").inner_text()
    last_y = page.evaluate(
        "() => { const d = window.pyrecover.charts.loss.data; return d[1][d[1].length - 1]; }"
    )
    assert legend != "--" and abs(float(legend.replace(",", "")) - last_y) < 1e-3 * max(1.0, abs(last_y))
    lr = page.locator("#chart-lr .u-legend .u-series").nth(1).locator(".u-value").inner_text()
    last_lr = page.evaluate(
        "() => { const d = window.pyrecover.charts.lr.data; return d[1][d[1].length - 1]; }"
    )
    assert abs(float(lr) - last_lr) < 1e-3 * last_lr  # a small learning rate is not rounded to 0
    step_legend = page.locator("#chart-loss .u-legend .u-series").nth(0).locator(".u-value").inner_text()
    assert step_legend.replace(",", "") == str(
        page.evaluate("() => window.pyrecover.charts.loss.data[0].at(-1)")
    )
    # attempt markers are the server's collapsed clusters
    labels = page.evaluate("() => window.pyrecover.series.markers.map(m => m.label)")
    assert labels == ["#2", "#3"]
    # the loss on a log axis: the same points, redrawn on the other scale and back
    linear = page.evaluate("() => window.pyrecover.charts.loss.data")
    page.check("#log-loss")
    page.wait_for_function(
        "() => window.pyrecover.charts.loss && window.pyrecover.charts.loss.scales.y.distr === 3"
    )
    assert page.evaluate("() => window.pyrecover.charts.loss.data") == linear
    page.uncheck("#log-loss")
    page.wait_for_function(
        "() => window.pyrecover.charts.loss && window.pyrecover.charts.loss.scales.y.distr === 1"
    )
    # MFU is measured on this run: its chart is shown
    assert page.locator("#chart-mfu").is_visible() and page.locator("#mfu-note").count() == 0
    # progress text readable on the bar and on the track (WCAG AA: 4.5:1)
    assert min(page.evaluate(CONTRAST_JS, "#run-summary .progress .label")) >= 4.5
    _shot(page, "run.png", readme=True)
    page.locator("#checkpoints-table").scroll_into_view_if_needed()
    _shot(page, "run-checkpoints.png")
    page.locator("#run-config").scroll_into_view_if_needed()
    _shot(page, "run-config.png")


def test_a_cpu_run_hides_mfu_and_sums_up(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/runs/{server.seeded.cpu_run}")
    page.wait_for_function("() => window.pyrecover && window.pyrecover.charts.loss !== undefined")
    assert not page.locator("#chart-mfu").is_visible()
    assert "not measured" in page.locator("#mfu-note").inner_text()
    summary = page.locator("#run-summary").inner_text().lower()
    assert "final loss" in summary and "61.4k" in summary and "wall time" in summary
    assert page.locator("#summary-wall").inner_text() != "–"
    assert min(page.evaluate(CONTRAST_JS, "#run-summary .progress .label")) >= 4.5  # on green


def test_hostile_values_render_as_text(server: Server, page: Any) -> None:
    from tests.controller.web.web_seed import HOSTILE_NAME, HOSTILE_VALUE, add_hostile_run

    hostile_run = add_hostile_run(server.factory)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for path in ("/", f"/runs/{hostile_run}", f"/runs/new?clone={hostile_run}"):
        page.goto(server.url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("() => window.__pwned") is None, path
        assert page.locator("img[src='x']").count() == 0, path
    assert not dialogs
    page.goto(f"{server.url}/runs/{hostile_run}")
    assert page.locator("#run-head h1 span").first.inner_text() == HOSTILE_NAME  # shown, as text
    dataset = page.locator('#run-config tr[data-key="training.dataset"] td.value').inner_text()
    assert dataset == HOSTILE_VALUE
    assert "hf_secret_value_never_shown" not in page.content()


def test_downloads_and_clone_from_the_run_page(server: Server, page: Any) -> None:
    from controller.web.runspec import load_yaml

    run_id = server.seeded.chart_run
    page.goto(f"{server.url}/runs/{run_id}")
    with page.expect_download() as csv_download:
        page.click("#download-csv")
    csv_text = Path(csv_download.value.path()).read_text()
    assert csv_download.value.suggested_filename == "llama-1b-main-metrics.csv"
    assert csv_text.splitlines()[0].startswith("step,attempt,time,loss")
    assert len(csv_text.splitlines()) == server.seeded.metric_points + 1
    with page.expect_download() as yaml_download:
        page.click("#download-config")
    spec = load_yaml(Path(yaml_download.value.path()).read_text())
    assert spec["name"] == "llama-1b-main" and spec["resources"]["partition"] == "gpu"
    page.click("#clone-run")
    page.wait_for_url("**/runs/new?clone=*")
    assert page.input_value('input[name="name"]') == "llama-1b-main-2"
    assert page.input_value('input[name="training.training_steps"]') == "4000"
    _shot(page, "new-run-clone.png")
    page.click("#submit-run")
    page.wait_for_url("**/runs/*")
    assert "llama-1b-main-2" in page.locator("#run-head h1").inner_text()
    assert page.locator("#run-state").get_attribute("data-state") == "PENDING"


def test_the_form_has_every_field_labelled_and_the_yaml_editor_names_the_line(
    server: Server, page: Any
) -> None:
    from controller.web.forms import FIELDS

    page.goto(server.url + "/runs/new")
    assert page.locator("[data-field]").count() == len(FIELDS)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('form input:not([type=hidden]), form select, form textarea')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.name)"""
    )
    assert unlabelled == []
    assert page.locator('select[name="training.model_dtype"]').input_value() == "bf16"
    page.click("#yaml-editor summary")
    page.fill(
        "#yaml-text",
        "name: yaml-browser\ntraining:\n  dataset: data/text.parquet\n  tokenizer_name_or_path: data/tok\n"
        "  trainng_steps: 5\nresources:\n  scheduler: local\n  time_limit: 10\n",
    )
    page.click("#submit-yaml")
    errors = page.locator("#yaml-errors").inner_text()
    assert "line 5" in errors and "trainng_steps" in errors
    assert page.locator("#yaml-editor").get_attribute("open") is not None
    page.locator("#yaml-errors").scroll_into_view_if_needed()
    _shot(page, "new-run-yaml-invalid.png")
