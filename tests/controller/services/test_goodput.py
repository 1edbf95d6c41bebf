"""Goodput arithmetic and the ledger (pure functions), and the one owner its readers share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.services.goodput import (
    LEDGER_CATEGORIES,
    AttemptGoodput,
    attempt_goodput,
    run_goodput,
    run_ledger,
)

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
        run.created_at = at(-10)  # before its attempts (the test's clock is in the past)
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
    assert '<div class="k">goodput</div><div class="v" id="summary-goodput">50.0%</div>' in page
    assert '<td class="num">50.0%</td>' in runs_page
    ratio = next(line for line in metrics.splitlines() if line.startswith("pyrecover_goodput_ratio "))
    assert float(ratio.split()[1]) == pytest.approx(api["goodput"])
    # the ledger: the same owner, every reader; it adds up to the run's wall time
    detail = api["goodput_detail"]
    assert sum(detail["ledger"].values()) == pytest.approx(detail["wall_s"], rel=0.01)
    assert detail["ledger"]["productive"] == pytest.approx(200.0) and detail["ledger"]["lost_work"] == 90.0
    samples = {
        line.split("{")[1].split("}")[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("pyrecover_run_seconds{")
    }
    assert samples['category="productive"'] == pytest.approx(200.0)
    assert 'id="run-ledger"' in page and '<span class="seg productive"' in page


# ------------------------------------------------------------------ the ledger
def row(number: int, **times: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "number": number,
        "submit_time": None,
        "start_time": None,
        "end_time": None,
        "training_started_at": None,
        "last_commit_at": None,
        "last_report_at": None,
        "end_reason": None,
        "checkpoint_load_s": 0.0,
        "checkpoint_stall_s": 0.0,
    }
    return SimpleNamespace(**(base | times))


def test_the_ledger_of_a_chained_run_accounts_for_every_second() -> None:
    attempts = [
        # 1: queued 10 s, 20 s start-up (5 of them loading), trains to its final commit, idle tail 5 s
        row(1, submit_time=at(5), start_time=at(15), training_started_at=at(35), checkpoint_load_s=5.0,
            last_commit_at=at(95), checkpoint_stall_s=4.0, end_time=at(100), end_reason="deadline_stop"),
        # 2: pre-queued at 90, starts 2 s after 1 ended; crashes 30 s after its last commit
        row(2, submit_time=at(90), start_time=at(102), training_started_at=at(110), last_commit_at=at(150),
            end_time=at(180), end_reason="failed"),
        # 3: submitted 20 s after 2 ended (backoff), hangs: last report at 220, ended hung at 260
        row(3, submit_time=at(200), start_time=at(205), training_started_at=at(210), last_commit_at=at(215),
            last_report_at=at(220), end_time=at(260), end_reason="hung"),
        # 4: still running at now=300, committed at 290
        row(4, submit_time=at(262), start_time=at(265), training_started_at=at(270), last_commit_at=at(290)),
    ]  # fmt: skip
    ledger = run_ledger(created=at(0), finished=None, attempts=attempts, now=at(300))
    assert ledger == pytest.approx(
        {
            "queue_wait": 15 + 2 + 5 + 3,
            "resubmission_gap": 20 + 2,
            "startup": 15 + 8 + 5 + 5,
            "checkpoint_load": 5,
            "productive": 56 + 40 + 5 + 20,
            "save_stall": 4,
            "idle_tail": 5,
            "lost_work": 30 + 5,
            "hung": 40,
            "in_progress": 10,
        }
    )
    assert sum(ledger.values()) == pytest.approx(300.0)
    assert list(ledger) == list(LEDGER_CATEGORIES)


def test_attempts_that_never_ran_and_a_finished_run() -> None:
    attempts = [row(1, submit_time=at(10), end_time=at(20), end_reason="cancelled")]  # cancelled in the queue
    ledger = run_ledger(created=at(0), finished=at(30), attempts=attempts, now=at(1000))
    assert ledger["queue_wait"] == 30 and sum(ledger.values()) == 30  # the run's wall time ends at finished


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 500)] * 7, st.sampled_from([None, "finished", "failed", "hung"]))))
def test_the_ledger_always_adds_up_to_the_wall_time(raw: list[tuple[Any, ...]]) -> None:
    """Whatever the clocks said (skewed, overlapping, missing times), every second is counted once."""
    attempts = []
    for i, (sub, start, train, commit, report, end, stall, reason) in enumerate(raw, start=1):
        attempts.append(
            row(i, submit_time=at(sub), start_time=at(start) if start % 7 else None,
                training_started_at=at(train) if train % 5 else None,
                last_commit_at=at(commit) if commit % 3 else None,
                last_report_at=at(report), end_time=at(end) if reason else None, end_reason=reason,
                checkpoint_stall_s=float(stall), checkpoint_load_s=float(stall % 11))
        )  # fmt: skip
    ledger = run_ledger(created=at(0), finished=None, attempts=attempts, now=at(600))
    assert all(v >= 0 for v in ledger.values()), ledger
    assert sum(ledger.values()) == pytest.approx(600.0, abs=1e-6)
