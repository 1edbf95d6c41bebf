"""Templates render the view objects (StrictUndefined: a missing name fails) and escape user text."""

from __future__ import annotations

import json
from typing import Any

from controller.web import forms
from controller.web.rendering import environment
from controller.web.views import (
    AttemptTimes,
    CheckpointRow,
    EventRow,
    RunDetail,
    RunRow,
    RunsPage,
    Viewer,
    timeline,
)

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>'


def _render(template: str, **context: Any) -> str:
    def url_for(name: str, /, **params: Any) -> str:
        return "/" + name + "".join(f"/{v}" for v in params.values())

    viewer = Viewer(logged_in=True, name="ada", auth_required=True, can_view=True, can_act=True)
    base = {
        "url_for": url_for,
        "static_url": lambda p: "/static/" + p,
        "csrf_token": "CSRF",
        "viewer": viewer,
        "now": NOW,
        "nav": "runs",
        "poll_ms": 1000,
        "fragment_url": "/f",
    }
    return environment().get_template(template).render(**(base | context))


def _row(i: int, state: str, name: str = "run") -> RunRow:
    return RunRow(
        id=i,
        name=f"{name}-{i}",
        state=state,
        step=50 * i,
        total_steps=1000,
        eta_seconds=125.0,
        attempts=3,
        restarts=[("deadline_stop", 2), ("node_fail", 1)],
        goodput=0.9,
        updated_at=NOW - 30,
    )


def test_runs_page_shows_badges_progress_restarts_and_pager() -> None:
    page = RunsPage(
        rows=[_row(3, "RUNNING"), _row(2, "FAILED", EVIL)],
        state=None,
        counts=[("RUNNING", 1), ("FAILED", 1)],
        total=2,
        newer_url=None,
        older_url="/?before=2",
    )
    html = _render("runs.html", page=page)
    assert '<span class="badge RUNNING">RUNNING</span>' in html
    assert "150 / 1000 (15%)" in html and "width: 15.0%" in html
    assert "deadline_stop ×2" in html and 'class="reason bad"' in html  # node_fail is a bad end
    assert "2m 05s" in html and "90.0%" in html and "30s ago" in html
    assert 'href="/?before=2"' in html and "page-newer" not in html
    assert EVIL not in html and "&lt;script&gt;" in html
    assert '<meta name="csrf-token" content="CSRF">' in html


def test_run_page_shows_timeline_checkpoints_events_and_actions() -> None:
    attempts = [
        AttemptTimes(
            number=1,
            backend="slurm",
            external_id="41",
            state="ENDED",
            end_reason="deadline_stop",
            submitted_at=NOW - 100,
            started_at=NOW - 90,
            stopping_at=NOW - 30,
            ended_at=NOW - 20,
            step_at_start=0,
            step_at_end=300,
        ),
        AttemptTimes(
            number=2,
            backend="slurm",
            external_id="42",
            state="RUNNING",
            end_reason=None,
            submitted_at=NOW - 25,
            started_at=NOW - 15,
            stopping_at=None,
            ended_at=None,
            step_at_start=300,
            step_at_end=None,
        ),
    ]
    run = RunDetail(
        id=7,
        name="llama",
        state="RUNNING",
        step=400,
        total_steps=1000,
        eta_seconds=60.0,
        attempts=2,
        restarts=[("deadline_stop", 1)],
        goodput=0.75,
        updated_at=NOW - 5,
        last_loss=2.345678,
        latest_checkpoint_step=300,
        message=None,
        config_json=json.dumps({"name": EVIL}),
        timeline=timeline(attempts, NOW),
        checkpoints=[
            CheckpointRow(
                step=300,
                path="/c/step-300",
                size_bytes=3 * 2**20,
                save_seconds=1.5,
                async_save=True,
                final=True,
                attempt=1,
            )
        ],
        events=[EventRow(time=NOW - 20, kind="attempt_ended", message=EVIL)],
    )
    html = _render("run.html", run=run, series_url="/s", chart_titles=(("loss", "Loss"),))
    assert 'id="run-state" data-state="RUNNING"' in html
    for action in ("checkpoint", "stop", "cancel"):
        assert f'data-action="{action}"' in html
    assert 'data-action="resume"' not in html
    assert html.count('class="tl-row"') == 2 and "tl-seg save" in html
    assert "3.0 MiB" in html and "1.50 s" in html and "async · final" in html
    assert "2.3457" in html and "step 300" in html
    assert EVIL not in html
    assert 'id="chart-loss"' in html and 'data-series-url="/s"' in html


def test_new_run_form_puts_messages_next_to_fields() -> None:
    html = _render(
        "new_run.html",
        sections=forms.SECTIONS,
        values={"name": EVIL, "training.async_checkpoint": True},
        field_errors={"training.training_steps": ["Input should be greater than 0"]},
        section_errors={"training": ["lr_warmup_steps must not exceed training_steps"]},
        form_errors=["HTTP 409: taken"],
        nav="new",
    )
    assert 'data-field="training.training_steps"' in html
    field = html.split('data-field="training.training_steps"', 1)[1].split('data-field="', 1)[0]
    assert "invalid" in html.split('data-field="training.training_steps"', 1)[0][-40:]
    assert "Input should be greater than 0" in field
    assert "lr_warmup_steps must not exceed training_steps" in html and "HTTP 409: taken" in html
    assert EVIL not in html and 'name="csrf_token" value="CSRF"' in html
    async_box = html.split('name="training.async_checkpoint"', 1)[1][:40]
    assert "checked" in async_box
