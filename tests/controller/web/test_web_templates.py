"""Templates render the view objects (StrictUndefined: a missing name fails) and escape user text."""

from __future__ import annotations

from typing import Any

import controller.api  # noqa: F401  (the app's import order: controller.api mounts the web routes)
from controller.web import forms, new_run
from controller.web.rendering import environment
from controller.web.runspec import config_groups
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
        config=config_groups(
            {
                "name": EVIL,
                "training": {"dataset": EVIL, "training_steps": 1000},
                "resources": {"env": {"A": EVIL}},
            }
        ),
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
            ),
            CheckpointRow(
                step=200,
                path="/c/step-200",
                size_bytes=3 * 2**20,
                save_seconds=1.0,
                async_save=False,
                final=False,
                attempt=1,
                deleted_at=NOW - 40,
            ),
        ],
        events=[EventRow(time=NOW - 20, kind="attempt_ended", message=EVIL)],
        tokens_seen=4_500_000,
        checkpoints_on_disk=1,
        checkpoints_total=2,
    )
    html = _render(
        "run.html",
        run=run,
        series_url="/s",
        chart_titles=(("loss", "Loss"), ("mfu", "MFU")),
        mfu_measured=False,
        can_create=True,
    )
    assert 'id="run-state" data-state="RUNNING"' in html
    for action in ("checkpoint", "stop", "cancel"):
        assert f'data-action="{action}"' in html
    assert 'data-action="resume"' not in html
    assert html.count('class="tl-row"') == 2 and "tl-seg save" in html
    assert "3.0 MiB" in html and "1.50 s" in html and "async · final" in html
    assert "2.3457" in html and "step 300" in html
    assert EVIL not in html
    assert 'id="chart-loss"' in html and 'data-series-url="/s"' in html
    # retention: the deleted row says so, the summary counts what is on disk
    assert 'data-step="200" data-on-disk="false"' in html and 'data-step="300" data-on-disk="true"' in html
    assert "1 of 2 on disk" in html and "4.50M" in html and "last loss" in html
    # MFU not measured: the chart is hidden and the page says why
    assert 'id="chart-mfu" data-metric="mfu" hidden' in html and 'id="mfu-note"' in html
    # readable configuration: one row per field, the default beside a changed value
    steps_row = html.split('data-key="training.training_steps"', 1)[1].split("</tr>", 1)[0]
    assert ">1000<" in steps_row and 'class="changed"' not in steps_row
    assert 'data-key="training.dataset"' in html and "&lt;script&gt;" in html
    assert "/web_run_metrics_csv/7" in html and "/web_run_config/7" in html and "?clone=7" in html


def test_a_viewer_gets_no_clone_link_and_a_completed_run_says_final_loss() -> None:
    from dataclasses import replace

    run = RunDetail(
        id=3, name="done", state="COMPLETED", step=10, total_steps=10, eta_seconds=None, attempts=1,
        restarts=[], goodput=1.0, updated_at=NOW, last_loss=1.5, latest_checkpoint_step=10, message=None,
        config=[], timeline=[], checkpoints=[], events=[],
    )  # fmt: skip
    html = _render(
        "run.html", run=replace(run), series_url="/s", chart_titles=(), mfu_measured=True, can_create=False
    )
    assert "final loss" in html and "?clone=" not in html and 'id="mfu-note"' not in html


def _page(**changes: Any) -> dict[str, Any]:
    page = new_run.Page(values=forms.default_values(), errors=forms.FormErrors(), yaml_text="name: x\n")
    for key, value in changes.items():
        setattr(page, key, value)
    return page.context()


def test_new_run_form_puts_messages_next_to_fields() -> None:
    values = forms.default_values() | {"name": EVIL, "training.async_checkpoint": True}
    errors = forms.FormErrors(
        fields={"training.training_steps": ["Input should be greater than 0"]},
        sections={"training": ["lr_warmup_steps must not exceed training_steps"]},
        form=["HTTP 409: taken"],
    )
    html = _render("new_run.html", **_page(values=values, errors=errors))
    assert 'data-field="training.training_steps"' in html
    field = html.split('data-field="training.training_steps"', 1)[1].split('data-field="', 1)[0]
    assert "invalid" in html.split('data-field="training.training_steps"', 1)[0][-40:]
    assert "Input should be greater than 0" in field and 'aria-invalid="true"' in field
    assert 'aria-describedby="help-training.training_steps err-training.training_steps"' in field
    assert "lr_warmup_steps must not exceed training_steps" in html and "HTTP 409: taken" in html
    assert EVIL not in html and 'name="csrf_token" value="CSRF"' in html
    async_box = html.split('name="training.async_checkpoint"', 1)[1][:40]
    assert "checked" in async_box


def test_new_run_form_shows_every_kind_of_field_at_its_default() -> None:
    html = _render("new_run.html", **_page())
    dtype = html.split('name="training.model_dtype"', 1)[1].split("</select>", 1)[0]
    assert '<option value="bf16" selected>' in dtype
    assert 'name="training.trackers[tensorboard]"' in html and 'name="training.trackers[wandb]"' in html
    assert '<textarea id="f-resources.env" name="resources.env"' in html
    for name in ("compile", "fused_optimizer", "grad_max_norm", "log_loss_to_csv", "profile"):
        assert f'name="training.{name}"' in html, name
    assert '<details class="more" id="more-training" >' in html  # all at the default: closed
    assert 'name="mode" value="yaml"' in html and "policy.notify" in html


def test_yaml_errors_name_their_line_and_the_text_stays_escaped() -> None:
    context = _page(
        mode="yaml",
        yaml_text=f"name: {EVIL}\n",
        yaml_errors=[new_run.YamlError(line=1, field="name", message="String should match pattern")],
    )
    html = _render("new_run.html", **context)
    assert 'id="yaml-editor" open' in html and 'data-line="1"' in html and "line 1: " in html
    assert EVIL not in html and "name: &lt;script&gt;" in html
