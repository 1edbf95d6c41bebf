"""The controller checks what workers claim: the issue's cases, through the real app.

* only a worker token posts reports, for its own run, and for its own attempt or an earlier one;
* no token is a 401 before the body is even read;
* a step beyond ``training_steps`` is refused; a checkpoint path outside the run's own
  directory is refused and recorded as a security event (and never listed);
* a report for an ended attempt, or of a CANCELLED/COMPLETED run, is recorded for its attempt
  but changes neither a state nor the progress of a run that is over.

The end-to-end case (a lying worker started by a real ``pyrecover serve`` never makes its run
COMPLETED) is at the bottom.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, WorkerEventRecord
from shared.events import WorkerAction
from shared.states import AttemptState, EndReason, RunState
from tests.controller.api.conftest import Api, make_api

T0 = 1_800_000_000.0


def _counts(api: Api) -> tuple[int, ...]:
    with api.factory() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (WorkerEventRecord, Metric, Checkpoint)
        )


def progress(seq: int, step: int) -> dict[str, Any]:
    return {"type": "progress", "seq": seq, "time": T0 + seq, "step": step, "loss": 2.0, "lr": 1e-3,
            "tokens_seen": step * 100}  # fmt: skip


def checkpoint(seq: int, step: int, path: str) -> dict[str, Any]:
    return {"type": "checkpoint_committed", "seq": seq, "time": T0 + seq, "step": step, "path": path,
            "format": "dcp", "size_bytes": 10, "save_seconds": 1.0, "stall_seconds": 0.25}  # fmt: skip


def post(api: Api, run_id: int, token: str | None, attempt: int, *events: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return api.client.post(
        f"/api/v1/runs/{run_id}/reports", json={"attempt": attempt, "events": list(events)}, headers=headers
    )


def _run(api: Api, run_id: int) -> Run:
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        s.expunge(run)
        return run


def _set(
    api: Api, run_id: int, *, run_state: RunState | None = None, attempt_state: dict[int, AttemptState]
) -> None:
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        if run_state is not None:
            run.state = run_state
        for attempt in s.scalars(select(Attempt).where(Attempt.run_id == run_id)):
            if attempt.number in attempt_state:
                attempt.state = attempt_state[attempt.number]
                if attempt.state == AttemptState.ENDED:
                    attempt.end_reason = EndReason.CANCELLED
        s.commit()


# ---------------------------------------------------------------------------------- who may report
def test_a_user_token_may_not_post_reports(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id)
    before = _counts(api)
    r = post(api, run_id, api.user, 1, progress(0, 1))
    assert r.status_code == 403 and "worker token" in r.json()["detail"]
    # Refused before the body is read: a user token learns nothing about what a valid batch is.
    assert api.client.post(f"/api/v1/runs/{run_id}/reports", content=b"{", headers=api.h()).status_code == 403
    assert _counts(api) == before


def test_another_runs_worker_token_is_refused(api: Api) -> None:
    a, b = api.create("a")["id"], api.create("b")["id"]
    api.attempt(a)
    token_b = api.attempt(b)
    r = post(api, a, token_b, 1, progress(0, 1))
    assert r.status_code == 403 and f"belongs to run {b}" in r.json()["detail"]


def test_a_token_reports_for_its_attempt_or_an_earlier_one_never_a_later_one(api: Api) -> None:
    run_id = api.create()["id"]
    token_1 = api.attempt(run_id, 1, state=AttemptState.ENDED)
    token_2 = api.attempt(run_id, 2)
    r = post(api, run_id, token_1, 2, progress(0, 5))
    assert r.status_code == 403 and "attempt 1" in r.json()["detail"]
    # The successor delivers its predecessor's spool with its own token.
    assert post(api, run_id, token_2, 1, progress(0, 5)).status_code == 200
    assert post(api, run_id, token_2, 2, progress(0, 6)).status_code == 200


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b'{"attempt": "x"}', b"[]"])
def test_no_token_is_401_before_the_body_is_validated(api: Api, body: bytes) -> None:
    run_id = api.create()["id"]
    r = api.client.post(f"/api/v1/runs/{run_id}/reports", content=body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"


def test_with_auth_off_only_a_worker_token_still_reports(tmp_path: Path) -> None:
    for api in make_api(tmp_path, auth_required=False):
        run_id = api.create()["id"]
        token = api.attempt(run_id)
        assert post(api, run_id, None, 1, progress(0, 1)).status_code == 403
        assert post(api, run_id, token, 1, progress(0, 1)).status_code == 200


# ---------------------------------------------------------------------------------- what it may claim
@pytest.mark.parametrize(
    ("event", "field"),
    [
        (progress(0, 2**31 - 1), "events[0].step"),  # the dashboard showed "2147483647%"
        (progress(0, 101), "events[0].step"),
        ({"type": "finished", "seq": 0, "time": T0, "step": 1000}, "events[0].step"),
        (
            {"type": "started", "seq": 0, "time": T0, "step": 0, "world_size": 1, "resume_step": 500},
            "events[0].resume_step",
        ),
    ],
)
def test_a_step_beyond_training_steps_is_refused(api: Api, event: dict[str, Any], field: str) -> None:
    run_id = api.create()["id"]  # 100 steps
    token = api.attempt(run_id, state=AttemptState.RUNNING)
    before = _counts(api)
    r = post(api, run_id, token, 1, progress(1, 10) | {"seq": 9}, event)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == field.replace("[0]", "[1]"), r.text
    assert _counts(api) == before and _run(api, run_id).current_step == 0


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/tmp/step-100",
        "{other}",  # another run's checkpoint directory
        "{own_dir}/step-99",  # the right directory, the wrong step
    ],
)
def test_a_checkpoint_outside_the_runs_directory_is_refused_and_recorded(api: Api, path: str) -> None:
    run_id = api.create("mine")["id"]
    api.create("other")
    token = api.attempt(run_id, state=AttemptState.RUNNING)
    own = api.step_dir("mine", 100)
    path = path.format(own=own, own_dir=str(Path(own).parent), other=api.step_dir("other", 100))
    r = post(api, run_id, token, 1, progress(0, 99), checkpoint(1, 100, path))
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events[1].path", r.text
    listed = api.client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=api.h()).json()
    assert listed["total"] == 0, "a refused checkpoint is never listed"
    run = _run(api, run_id)
    assert run.latest_checkpoint_step is None and run.current_step == 0 and run.state != RunState.COMPLETED
    with api.factory() as s:
        [event] = s.scalars(select(Event).where(Event.run_id == run_id, Event.kind == "security")).all()
    assert "events[1].path" in event.message and event.data == {"field": "events[1].path", "attempt": 1}
    events = api.client.get(f"/api/v1/runs/{run_id}/events", headers=api.h()).json()["items"]
    assert any(e["kind"] == "security" for e in events), "the owner sees it on the run"
    # The run's own step directory is accepted.
    assert post(api, run_id, token, 1, checkpoint(2, 100, own)).status_code == 200


def test_a_resume_from_outside_the_runs_directory_is_refused(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    started = {"type": "started", "seq": 0, "time": T0, "step": 40, "world_size": 1, "resume_step": 40,
               "resumed_from": "/etc/step-40"}  # fmt: skip
    r = post(api, run_id, token, 1, started)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events[0].resumed_from"
    ok = started | {"resumed_from": api.step_dir("run-1", 40)}
    assert post(api, run_id, token, 1, ok).status_code == 200


# ---------------------------------------------------------------------------------- when it may change things
@pytest.mark.parametrize("final", [RunState.CANCELLED, RunState.COMPLETED, RunState.FAILED])
def test_late_reports_of_a_run_that_is_over_are_recorded_but_change_nothing(
    api: Api, final: RunState
) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    assert (
        post(api, run_id, token, 1, progress(0, 10), checkpoint(1, 10, api.step_dir("run-1", 10))).status_code
        == 200
    )
    _set(api, run_id, run_state=final, attempt_state={1: AttemptState.ENDED})
    before = _run(api, run_id)
    late = [
        {"type": "started", "seq": 2, "time": T0, "step": 10, "world_size": 1},
        progress(3, 60),
        checkpoint(4, 60, api.step_dir("run-1", 60)),
        {"type": "stopping", "seq": 5, "time": T0 + 5, "step": 60, "reason": "deadline"},
        {"type": "failed", "seq": 6, "time": T0 + 6, "step": 60, "error": "Traceback\nlate: boom"},
        {"type": "finished", "seq": 7, "time": T0 + 7, "step": 100},
    ]
    r = post(api, run_id, token, 1, *late)
    assert r.status_code == 200 and r.json() == {"accepted": 6, "duplicates": 0, "action": "none"}
    after = _run(api, run_id)
    assert after.state == final, "a late report never changes the run's state"
    for column in ("current_step", "tokens_seen", "latest_checkpoint_step", "last_error", "finished_at"):
        assert getattr(after, column) == getattr(before, column), column
    with api.factory() as s:
        attempt = s.scalar(select(Attempt).where(Attempt.run_id == run_id))
        assert (
            attempt is not None and attempt.state == AttemptState.ENDED and attempt.end_reason == "cancelled"
        )
        # Recorded for the attempt: its metric, its checkpoint, its own figures.
        assert s.scalar(select(func.count()).select_from(Metric).where(Metric.step == 60)) == 1
        assert s.scalar(select(Checkpoint.attempt).where(Checkpoint.step == 60)) == 1
        assert attempt.checkpoint_stall_s == 0.5 and attempt.error == "Traceback\nlate: boom"


def test_a_predecessors_late_report_leaves_the_live_successor_alone(api: Api) -> None:
    run_id = api.create()["id"]
    api.attempt(run_id, 1, state=AttemptState.ENDED)
    token_2 = api.attempt(run_id, 2, state=AttemptState.RUNNING)
    _set(api, run_id, run_state=RunState.RUNNING, attempt_state={1: AttemptState.ENDED})
    with api.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        run.pending_action = WorkerAction.CHECKPOINT
        s.commit()
    stopping = {"type": "stopping", "seq": 0, "time": T0, "step": 30, "reason": "deadline"}
    r = post(api, run_id, token_2, 1, progress(1, 30), stopping)  # the successor replays a spool
    assert r.status_code == 200 and r.json()["action"] == "none", "the old attempt's reply asks nothing"
    with api.factory() as s:
        states = dict(s.execute(select(Attempt.number, Attempt.state).where(Attempt.run_id == run_id)).all())
        run = s.get(Run, run_id)
        assert run is not None
        assert states == {1: AttemptState.ENDED, 2: AttemptState.RUNNING}
        assert run.pending_action == WorkerAction.CHECKPOINT, "the live worker's request is still there"
        assert run.current_step == 30  # the run is not over: its progress moves on
    assert post(api, run_id, token_2, 2, progress(0, 31)).json()["action"] == "checkpoint"


def test_a_late_checkpoint_report_corrects_its_ended_attempts_figures(api: Api) -> None:
    """The attempt ended (its report was delayed): the figures it shows follow what it committed."""
    run_id = api.create()["id"]
    token = api.attempt(run_id, 1, state=AttemptState.ENDED)
    _set(api, run_id, run_state=RunState.QUEUED, attempt_state={1: AttemptState.ENDED})
    with api.factory() as s:
        attempt = s.scalar(select(Attempt).where(Attempt.run_id == run_id))
        assert attempt is not None
        attempt.step_at_start, attempt.step_at_end = 0, 0
        s.commit()
    r = post(api, run_id, token, 1, checkpoint(1, 40, api.step_dir("run-1", 40)), progress(2, 45))
    assert r.status_code == 200
    with api.factory() as s:
        attempt = s.scalar(select(Attempt).where(Attempt.run_id == run_id))
        assert attempt is not None and attempt.step_at_end == 40, "a committed step, not the progress"
        run = s.get(Run, run_id)
        assert run is not None and run.latest_checkpoint_step == 40


# ---------------------------------------------------------------------------------- end to end
LIAR = """#!{python}
# Stands in for the worker: reports what it was told to claim, then exits 0 (a "clean" exit).
import json, os, sys, time, httpx
name = sys.argv[sys.argv.index("--experiment-name") + 1]
claims = json.load(open({claims!r}))[name]
url = os.environ["PYRECOVER_CONTROLLER_URL"] + "/api/v1/runs/" + os.environ["PYRECOVER_RUN_ID"] + "/reports"
token = open(os.environ["PYRECOVER_TOKEN_FILE"]).read().strip()
for i, event in enumerate(claims):
    event = dict(event, seq=i, time=time.time())
    r = httpx.post(url, json={{"attempt": int(os.environ["PYRECOVER_ATTEMPT"]), "events": [event]}},
                   headers={{"Authorization": "Bearer " + token}}, timeout=30)
    print(event["type"], r.status_code, r.text, flush=True)
"""


@pytest.mark.slow
def test_a_lying_worker_never_completes_its_run_through_a_real_controller(tmp_path: Path) -> None:
    """The issue's two ways to COMPLETED without training: 'finished' at step 3 of 100, and a
    checkpoint at step 100 at /etc/shadow. A real ``pyrecover serve`` (local backend) starts the
    liar as its worker; each run must end FAILED, with security events, never COMPLETED."""
    from tests.integration.local_harness import Controller

    claims = {
        "finish-early": [{"type": "started", "step": 0, "world_size": 1}, {"type": "finished", "step": 3}],
        "shadow": [
            {"type": "started", "step": 0, "world_size": 1},
            {"type": "checkpoint_committed", "step": 100, "path": "/etc/shadow", "format": "dcp",
             "size_bytes": 1, "save_seconds": 0.1},
            {"type": "finished", "step": 100},
        ],
    }  # fmt: skip
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    liar = tmp_path / "liar-python"
    liar.write_text(LIAR.format(python=sys.executable, claims=str(tmp_path / "claims.json")))
    liar.chmod(liar.stat().st_mode | stat.S_IXUSR)
    ctl = Controller(tmp_path / "ctl")
    ctl.data_dir.mkdir()
    ctl.env["PYRECOVER_WORKER_PYTHON"] = str(liar)
    ctl.env["PYRECOVER_AUTH_REQUIRED"] = "true"
    ctl.env["PYRECOVER_INPUTS_VISIBLE"] = "[]"  # the stand-in worker reads no data: none is made
    ctl.setup()
    ctl.start()
    try:
        ids = {}
        for name in claims:
            body = {
                "name": name,
                "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 100},
                "resources": {"scheduler": "local", "time_limit": "1m"},
                "policy": {"max_failures_without_progress": 2, "backoff_seconds": 0},
            }
            ids[name] = ctl.api("POST", "/runs", json=body)["id"]
        for name, run_id in ids.items():
            run = ctl.wait_terminal(run_id, 120)
            assert run["state"] == "FAILED", (name, run)
            assert run["latest_checkpoint_step"] is None and run["current_step"] <= 3
            events = ctl.items(f"/runs/{run_id}/events")
            security = [e["message"] for e in events if e["kind"] == "security"]
            assert security, (name, events)
            jobs = ctl.items(f"/runs/{run_id}/jobs")
            assert all(j["end_reason"] == "failed" for j in jobs) and len(jobs) == 2
            assert "the worker reported finished, but" in (jobs[0]["error"] or "")
            print(f"\n{name}: FAILED after {len(jobs)} attempts; security events: {security[0][:120]}")
        assert ctl.items("/runs/" + str(ids["shadow"]) + "/checkpoints") == []
    finally:
        ctl.stop()
