"""Worker reports: what each event records, idempotency, goodput on the run, the series endpoints."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.api.routes import reports as reports_route
from controller.db.models import Checkpoint, Event, Metric, WorkerEventRecord
from controller.services import ingest
from shared.states import AttemptState
from tests.controller.api.conftest import Api

T0 = 1_800_000_000.0


def _progress(seq: int, step: int, t: float) -> dict[str, Any]:
    return {
        "type": "progress",
        "seq": seq,
        "time": t,
        "step": step,
        "loss": 5.0 - step / 100,
        "lr": 1e-3,
        "tokens_seen": step * 1000,
        "tokens_per_s": 500.0,
        "step_time": 0.5,
    }


def _ckpt(api: Api, seq: int, step: int, t: float, stall: float = 0.5, run: str = "run-1") -> dict[str, Any]:
    return {
        "type": "checkpoint_committed",
        "seq": seq,
        "time": t,
        "step": step,
        "path": api.step_dir(run, step),
        "format": "dcp",
        "size_bytes": 123,
        "save_seconds": 1.0,
        "stall_seconds": stall,
    }


def _started(seq: int, t: float) -> dict[str, Any]:
    return {
        "type": "started",
        "seq": seq,
        "time": t,
        "step": 0,
        "world_size": 1,
        "startup_seconds": 4.0,
        "checkpoint_load_seconds": 1.0,
    }


def _counts(api: Api) -> tuple[int, ...]:
    with api.factory() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (WorkerEventRecord, Metric, Checkpoint, Event)
        )


def test_a_retried_batch_changes_nothing_twice(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    batch = {"attempt": 1, "events": [_started(0, T0), _progress(1, 10, T0 + 5), _ckpt(api, 2, 10, T0 + 6)]}
    url = f"/api/v1/runs/{run_id}/reports"
    first = api.client.post(url, json=batch, headers=api.h(token))
    assert first.status_code == 200 and first.json() == {"accepted": 3, "duplicates": 0, "action": "none"}
    before = _counts(api)
    run_before = api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()
    again = api.client.post(url, json=batch, headers=api.h(token)).json()
    assert again == {"accepted": 0, "duplicates": 3, "action": "none"}
    assert _counts(api) == before
    run_after = api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()
    for key in ("current_step", "tokens_seen", "latest_checkpoint_step", "updated_at"):
        assert run_after[key] == run_before[key]
    # A batch mixing old and new events stores only the new one; a seq repeated inside a batch once.
    mixed = {
        "attempt": 1,
        "events": [_progress(1, 10, T0 + 5), _progress(3, 20, T0 + 9), _progress(3, 20, T0 + 9)],
    }
    assert api.client.post(url, json=mixed, headers=api.h(token)).json()["accepted"] == 1


def test_events_update_attempt_and_run(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    with api.factory() as s:
        from controller.db.models import Attempt, Run
        from controller.db.types import to_datetime

        attempt = s.scalar(select(Attempt))
        run = s.get(Run, run_id)
        assert attempt is not None and run is not None
        attempt.submit_time = to_datetime(T0 - 20)
        run.state = "QUEUED"  # type: ignore[assignment]
        s.commit()
    url = f"/api/v1/runs/{run_id}/reports"
    events = [
        _started(0, T0),
        _progress(1, 10, T0 + 10),
        _ckpt(api, 2, 10, T0 + 30),
        _progress(3, 20, T0 + 40),
        {
            "type": "warning",
            "seq": 4,
            "time": T0 + 41,
            "step": 20,
            "kind": "corrupt_checkpoint",
            "message": "skipped step-5",
        },
        {"type": "stopping", "seq": 5, "time": T0 + 45, "step": 20, "reason": "deadline"},
    ]
    reply = api.client.post(url, json={"attempt": 1, "events": events}, headers=api.h(token)).json()
    assert reply["accepted"] == 6
    run = api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()
    assert run["state"] == "RUNNING" and run["current_step"] == 20 and run["tokens_seen"] == 20000
    assert run["latest_checkpoint_step"] == 10 and run["attempts_count"] == 1
    [job] = api.client.get(f"/api/v1/runs/{run_id}/jobs", headers=api.h()).json()["items"]
    assert job["state"] == "STOPPING" and job["startup_s"] == 4.0 and job["checkpoint_load_s"] == 1.0
    assert job["queue_wait_s"] == 15.0  # submitted T0-20, started T0-5 (T0 minus start-up and load)
    assert job["productive_committed_s"] == 30.0 and job["checkpoint_stall_s"] == 0.5
    [ckpt] = api.client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=api.h()).json()["items"]
    assert ckpt["step"] == 10 and ckpt["attempt"] == 1 and ckpt["path"] == api.step_dir("run-1", 10)
    metrics = api.client.get(f"/api/v1/runs/{run_id}/metrics", headers=api.h()).json()
    assert [m["step"] for m in metrics["items"]] == [10, 20] and metrics["items"][0]["loss"] == 4.9
    kinds = [
        e["kind"] for e in api.client.get(f"/api/v1/runs/{run_id}/events", headers=api.h()).json()["items"]
    ]
    assert "warning:corrupt_checkpoint" in kinds and "stopping" in kinds and "started" in kinds
    failed = {
        "type": "failed",
        "seq": 6,
        "time": T0 + 46,
        "step": 20,
        "error": "Traceback\nOSError: disk full",
    }
    api.client.post(url, json={"attempt": 1, "events": [failed]}, headers=api.h(token))
    assert (
        "OSError: disk full" in api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()["last_error"]
    )


def test_report_for_an_unknown_attempt_is_409_and_stores_nothing(api: Api) -> None:
    from controller.services import issue_worker_token

    run_id = api.create()["id"]
    api.attempt(run_id)
    with api.factory() as s:
        token = issue_worker_token(s, run_id, attempt=7)  # issued for an attempt the run never had
        s.commit()
    before = _counts(api)
    r = api.client.post(
        f"/api/v1/runs/{run_id}/reports",
        json={"attempt": 7, "events": [_progress(0, 1, T0)]},
        headers=api.h(token),
    )
    assert r.status_code == 409 and r.json()["field"] == "attempt"
    assert _counts(api) == before


def test_metrics_downsampling_keeps_first_and_last(api: Api) -> None:
    run_id = api.create(training_steps=1000)["id"]
    token = api.attempt(run_id, state=AttemptState.RUNNING)
    events = [_progress(i, i + 1, T0 + i) for i in range(500)]
    api.client.post(
        f"/api/v1/runs/{run_id}/reports", json={"attempt": 1, "events": events}, headers=api.h(token)
    )
    full = api.client.get(f"/api/v1/runs/{run_id}/metrics?limit=1000", headers=api.h()).json()
    assert full["total"] == 500 and len(full["items"]) == 500
    thin = api.client.get(f"/api/v1/runs/{run_id}/metrics?max_points=50", headers=api.h()).json()
    steps = [m["step"] for m in thin["items"]]
    assert len(steps) == 50 and steps[0] == 1 and steps[-1] == 500 and steps == sorted(steps)
    paged = api.client.get(f"/api/v1/runs/{run_id}/metrics?limit=100&offset=450", headers=api.h()).json()
    assert [m["step"] for m in paged["items"]] == list(range(451, 501))
    assert api.client.get(f"/api/v1/runs/{run_id}/metrics?max_points=1", headers=api.h()).status_code == 422


def test_a_nan_loss_as_the_worker_sends_it_is_accepted_and_stored_as_no_value(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id, state=AttemptState.RUNNING)
    skipped = _progress(1, 2, T0 + 1) | {"loss": math.nan, "skipped_steps": 1}  # an update skipped
    body = json.dumps({"attempt": 1, "events": [_progress(0, 1, T0), skipped]})  # NaN: the worker's encoding
    headers = api.h(token) | {"Content-Type": "application/json"}
    reply = api.client.post(f"/api/v1/runs/{run_id}/reports", content=body, headers=headers)
    assert reply.status_code == 200 and reply.json()["accepted"] == 2, reply.text
    items = api.client.get(f"/api/v1/runs/{run_id}/metrics", headers=api.h()).json()["items"]
    assert [(m["step"], m["loss"]) for m in items] == [(1, 4.99), (2, None)]
    assert api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()["current_step"] == 2


class _WatchedLock:
    """A lock that knows which thread holds it and how often it was taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.entries = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.owner = threading.get_ident()
        self.entries += 1

    def __exit__(self, *exc: object) -> None:
        self.owner = None
        self._lock.release()


def test_concurrent_reports_on_sqlite_are_written_one_at_a_time_and_all_land(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite admits one writer; concurrent report threads queue on the app's lock, not in SQLite's
    # busy handler whose sleeps made a latency tail of seconds under load.
    lock = _WatchedLock()
    api.client.app.state.report_write_lock = lock  # type: ignore[attr-defined]
    outside: list[int] = []

    def watched_ingest(*args: Any, **kwargs: Any) -> Any:
        if lock.owner != threading.get_ident():
            outside.append(threading.get_ident())
        time.sleep(0.002)  # widen the window another writer would slip into
        return ingest(*args, **kwargs)

    monkeypatch.setattr(reports_route, "ingest", watched_ingest)
    workers = [(run_id, api.attempt(run_id)) for run_id in (api.create(f"w{i}")["id"] for i in range(6))]
    batches = 5

    def work(run_id: int, token: str) -> list[int]:
        codes = []
        for b in range(batches):
            events = [_progress(b * 8 + k, b * 8 + k + 1, T0 + b * 8 + k) for k in range(8)]
            r = api.client.post(
                f"/api/v1/runs/{run_id}/reports", json={"attempt": 1, "events": events}, headers=api.h(token)
            )
            codes.append(r.status_code if r.json().get("accepted") == 8 else -r.status_code)
        return codes

    with ThreadPoolExecutor(len(workers)) as pool:
        results = list(pool.map(lambda w: work(*w), workers))
    assert results == [[200] * batches] * len(workers)
    assert lock.entries == len(workers) * batches
    assert outside == []
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Metric)) == len(workers) * batches * 8


def _deleted(seq: int, step: int, t: float, steps: list[int]) -> dict[str, Any]:
    return {"type": "checkpoints_deleted", "seq": seq, "time": t, "step": step, "steps": steps}


def test_checkpoints_deleted_by_retention_are_marked_and_the_api_says_which_exist(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    url = f"/api/v1/runs/{run_id}/reports"
    events = [_ckpt(api, i, step, T0 + step) for i, step in enumerate((10, 20, 30, 40))]
    events += [_deleted(4, 30, T0 + 31, [10]), _deleted(5, 40, T0 + 41, [20, 999])]  # 999: no such row
    first = api.client.post(url, json={"attempt": 1, "events": events}, headers=api.h(token))
    assert first.status_code == 200

    def listed() -> dict[int, tuple[bool, Any]]:
        items = api.client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=api.h()).json()["items"]
        return {c["step"]: (c["on_disk"], c["deleted_at"]) for c in items}

    ckpts = listed()
    assert {s: on for s, (on, _) in ckpts.items()} == {10: False, 20: False, 30: True, 40: True}
    assert ckpts[10][1].startswith("2027-01-15") and ckpts[30][1] is None
    run = api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()
    assert run["latest_checkpoint_step"] == 40
    # A repeated report keeps the first deletion time; a step committed again is on disk again.
    later = [_deleted(6, 40, T0 + 500, [10]), _ckpt(api, 7, 20, T0 + 600)]
    assert api.client.post(url, json={"attempt": 1, "events": later}, headers=api.h(token)).status_code == 200
    again = listed()
    assert again[10] == ckpts[10] and again[20] == (True, None)
    # Retention never deletes the newest: a report that says so leaves the latest on the newest
    # checkpoint still on disk, never on a deleted one.
    lie = [_deleted(8, 40, T0 + 700, [40, 30])]
    assert api.client.post(url, json={"attempt": 1, "events": lie}, headers=api.h(token)).status_code == 200
    assert api.client.get(f"/api/v1/runs/{run_id}", headers=api.h()).json()["latest_checkpoint_step"] == 20


@pytest.mark.parametrize(
    "steps", [[], [-1], [2**31], list(range(10_001))], ids=["empty", "negative", "int32", "too-many"]
)
def test_a_deletion_report_outside_the_schema_is_refused_whole(api: Api, steps: list[int]) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    before = _counts(api)
    batch = {"attempt": 1, "events": [_deleted(0, 5, T0, steps)]}
    r = api.client.post(f"/api/v1/runs/{run_id}/reports", json=batch, headers=api.h(token))
    assert r.status_code == 422 and "steps" in r.text
    assert _counts(api) == before


def test_hung_and_diverged_events_are_stored_and_readable_in_the_run_log(api: Api) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    url = f"/api/v1/runs/{run_id}/reports"
    hung = {
        "type": "hung",
        "seq": 1,
        "time": T0 + 50,
        "step": 8,
        "phase": "step",
        "rank": 0,
        "host": "node-a",
        "stalled_seconds": 61.5,
        "limit_seconds": 60.0,
        "suspects": [
            {"rank": 1, "host": "node-b", "phase": "step", "step": 8, "reason": "not running (no heartbeat)"}
        ],
        "stacks_path": "/c/run/.watchdog/a0001-abc/stacks-rank0.txt",
        "stacks_excerpt": 'Thread 0x1 (most recent call first):\n  File "loop.py"\x00',
    }
    diverged = {
        "type": "diverged",
        "seq": 2,
        "time": T0 + 60,
        "step": 14,
        "reason": "non_finite",
        "message": "diverged at step 14: 3 updates in a row had a non-finite loss",
        "skipped_steps": 3,
        "committed_step": 10,
        "committed_cursor": {"chunks_consumed": 40, "epoch": 0},
        "cursor": {"chunks_consumed": 56, "epoch": 0},
    }
    reply = api.client.post(
        url, json={"attempt": 1, "events": [_started(0, T0), hung, diverged]}, headers=api.h(token)
    )
    assert reply.status_code == 200 and reply.json()["accepted"] == 3, reply.text
    items = api.client.get(f"/api/v1/runs/{run_id}/events", headers=api.h()).json()["items"]
    by_kind = {e["kind"]: e for e in items}
    assert (
        "rank 1 on node-b" in by_kind["hung"]["message"] and "stacks-rank0.txt" in by_kind["hung"]["message"]
    )
    assert by_kind["hung"]["data"]["suspects"][0]["host"] == "node-b"
    assert "\x00" not in by_kind["hung"]["data"]["stacks_excerpt"]  # PostgreSQL refuses NUL
    assert "attempt 1 diverged" in by_kind["diverged"]["message"]
    assert by_kind["diverged"]["data"]["cursor"]["chunks_consumed"] == 56
    with api.factory() as s:
        kinds = sorted(s.scalars(select(WorkerEventRecord.type)).all())
    assert kinds == ["diverged", "hung", "started"]


@pytest.mark.parametrize(
    "bad",
    [
        {"host": "node\nb"},
        {"stalled_seconds": 1e12},  # past ten years
        {"suspects": [{"rank": -1, "host": "x", "reason": "r"}]},
        {"phase": "lunch"},
    ],
)
def test_a_malformed_hung_event_is_refused(api: Api, bad: dict[str, Any]) -> None:
    run_id = api.create()["id"]
    token = api.attempt(run_id)
    event = {"type": "hung", "seq": 0, "time": T0, "step": 1, "phase": "step", "rank": 0, "host": "h",
             "stalled_seconds": 1.0, "limit_seconds": 1.0, **bad}  # fmt: skip
    r = api.client.post(
        f"/api/v1/runs/{run_id}/reports", json={"attempt": 1, "events": [event]}, headers=api.h(token)
    )
    assert r.status_code == 422
