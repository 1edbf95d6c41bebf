"""``GET /metrics`` parses as Prometheus text and counts what is stored."""

from __future__ import annotations

import re

from sqlalchemy import select

from controller.db.models import Attempt
from controller.db.types import to_datetime
from controller.services import issue_worker_token
from shared.states import AttemptState, EndReason
from tests.controller.api.conftest import Api

LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? -?[0-9.e+-]+$|^[a-z_]+(\{[a-z_]+="[^"]*"\})? (\+Inf|NaN)$')


def test_prometheus_text(api: Api) -> None:
    run_id = api.create()["id"]
    api.create("run-2")
    token = api.attempt(run_id, 1, AttemptState.RUNNING)
    with api.factory() as s:
        a1 = s.scalar(select(Attempt))
        assert a1 is not None
        a1.state, a1.end_reason = AttemptState.ENDED, EndReason.TIMEOUT_KILLED
        a1.start_time, a1.end_time = to_datetime(1000.0), to_datetime(1100.0)
        a1.training_started_at, a1.last_commit_at = to_datetime(1010.0), to_datetime(1060.0)
        s.add(Attempt(run_id=run_id, number=2, backend="local", job_name="j2", state=AttemptState.PENDING))
        token = issue_worker_token(s, run_id, attempt=2)  # one token per attempt
        s.commit()
    batch = {"attempt": 2, "events": [{"type": "finished", "seq": 0, "time": 1.0, "step": 1}]}
    api.client.post(f"/api/v1/runs/{run_id}/reports", json=batch, headers=api.h(token))
    r = api.client.get("/metrics", headers=api.h())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        assert LINE.match(line), line
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    assert samples['pyrecover_runs{state="PENDING"}'] == 2
    assert samples['pyrecover_attempts_ended_total{end_reason="timeout_killed"}'] == 1
    assert samples["pyrecover_missed_deadlines_total"] == 1
    assert samples["pyrecover_resubmissions_total"] == 1
    assert samples["pyrecover_allocated_seconds"] == 100.0
    assert samples["pyrecover_productive_committed_seconds"] == 50.0
    assert samples["pyrecover_goodput_ratio"] == 0.5
    assert samples['pyrecover_report_events_total{outcome="accepted"}'] == 1
    assert samples["pyrecover_report_latency_seconds_count"] == 1
    assert samples['pyrecover_report_latency_seconds_bucket{le="+Inf"}'] == 1
