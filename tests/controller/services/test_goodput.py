"""Goodput arithmetic (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.services.goodput import AttemptGoodput, attempt_goodput, run_goodput

T = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def test_an_attempt_that_committed_and_stopped() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=at(30),
        end=at(330),
        training_started=at(45),
        last_commit=at(300),
        startup_s=10.0,
        checkpoint_load_s=5.0,
        checkpoint_stall_s=3.0,
        now=at(1000),
    )
    assert g == AttemptGoodput(
        allocated_s=300.0,
        queue_wait_s=30.0,
        startup_s=10.0,
        checkpoint_load_s=5.0,
        productive_committed_s=255.0,
        lost_work_s=30.0,
        checkpoint_stall_s=3.0,
    )


def test_a_live_attempt_counts_up_to_now_and_nothing_committed_is_all_lost() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=at(10),
        end=None,
        training_started=at(20),
        last_commit=None,
        startup_s=0.0,
        checkpoint_load_s=0.0,
        checkpoint_stall_s=0.0,
        now=at(110),
    )
    assert g.allocated_s == 100.0 and g.productive_committed_s == 0.0 and g.lost_work_s == 90.0


def test_never_started_allocates_nothing() -> None:
    g = attempt_goodput(
        submit=at(0),
        start=None,
        end=None,
        training_started=None,
        last_commit=None,
        startup_s=0.0,
        checkpoint_load_s=0.0,
        checkpoint_stall_s=0.0,
        now=at(50),
    )
    assert g.allocated_s == 0.0 and g.queue_wait_s == 0.0 and g.lost_work_s == 0.0


def test_run_goodput_is_productive_over_allocated() -> None:
    a = AttemptGoodput(allocated_s=300.0, productive_committed_s=240.0, lost_work_s=20.0)
    b = AttemptGoodput(allocated_s=100.0, productive_committed_s=0.0, lost_work_s=100.0)
    total = run_goodput([a, b])
    assert total.allocated_s == 400.0 and total.lost_work_s == 120.0
    assert total.goodput == pytest.approx(0.6)
    assert run_goodput([]).goodput is None


def test_api_dashboard_and_metrics_agree_after_a_batch_of_only_progress_events(tmp_path: Path) -> None:
    """One owner: the figures are derived when read, so no reader can lag behind another (the
    dashboard used to read a copy refreshed only by non-progress reports)."""
    from fastapi.testclient import TestClient

    from controller.api import create_app
    from controller.db import make_engine, make_session_factory, upgrade_database
    from controller.db.models import Attempt
    from controller.services import create_run, first_admin, issue_worker_token
    from controller.settings import Settings
    from controller.web.formatting import pct
    from shared.schemas import RunCreate
    from shared.states import AttemptState, EndReason

    # Auth off (as `serve --insecure-no-auth` on a loopback address): this test is about the three
    # readers agreeing on goodput, and reads them all without signing in.
    settings = Settings(data_dir=tmp_path, run_reconciler=False, auth_required=False)
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    body = {
        "name": "gp",
        "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 100},
        "resources": {"scheduler": "local", "time_limit": "10m"},
    }
    with factory() as s:
        run = create_run(s, RunCreate.model_validate(body), owner=first_admin(s))
        s.flush()
        # attempt 1 ended: 300 s allocated, 200 s of it ended in a committed checkpoint
        s.add(
            Attempt(
                run_id=run.id, number=1, backend="local", job_name="a1", state=AttemptState.ENDED,
                end_reason=EndReason.DEADLINE_STOP, start_time=at(0), training_started_at=at(50),
                last_commit_at=at(250), end_time=at(300),
            )
        )  # fmt: skip
        # attempt 2 ran 100 s and committed nothing yet: its progress reports change no input
        s.add(
            Attempt(
                run_id=run.id, number=2, backend="local", job_name="a2", state=AttemptState.ENDED,
                end_reason=EndReason.FAILED, start_time=at(400), training_started_at=at(410),
                end_time=at(500),
            )
        )  # fmt: skip
        token = issue_worker_token(s, run.id)
        s.commit()
        run_id = run.id
    progress = [
        {
            "type": "progress",
            "seq": i,
            "time": 1.8e9 + i,
            "step": 10 + i,
            "loss": 3.0,
            "lr": 1e-3,
            "tokens_seen": i,
        }
        for i in range(5)
    ]
    with TestClient(
        create_app(settings, session_factory=factory), base_url="http://127.0.0.1:8000"
    ) as client:
        r = client.post(
            f"/api/v1/runs/{run_id}/reports",
            json={"attempt": 2, "events": progress},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == 5, r.text
        api = client.get(f"/api/v1/runs/{run_id}").json()
        listed = client.get("/api/v1/runs").json()["items"][0]
        page = client.get(f"/runs/{run_id}").text
        runs_page = client.get("/").text
        metrics = client.get("/metrics").text
    engine.dispose()
    expected = 200.0 / 400.0
    assert api["goodput"] == pytest.approx(expected) and listed["goodput"] == api["goodput"]
    assert api["goodput_detail"]["allocated_s"] == pytest.approx(400.0)
    assert pct(api["goodput"]) == "50.0%"
    assert '<div class="k">goodput</div><div class="v">50.0%</div>' in page
    assert '<td class="num">50.0%</td>' in runs_page
    ratio = next(line for line in metrics.splitlines() if line.startswith("pyrecover_goodput_ratio "))
    assert float(ratio.split()[1]) == pytest.approx(api["goodput"])
