"""Limits: request bodies are capped (413 with the limit in the message) on every route that takes
one, and a worker flooding reports is throttled (429 + Retry-After) so other runs' reports still
get through, all of them, with bounded latency. The flood runs over real HTTP (uvicorn)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controller.api import create_app
from controller.api.limits import REPORT_BURST, REPORT_RATE_PER_S, RateLimited, ReportRateLimiter
from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Run, WorkerEventRecord
from controller.services import create_user_token, issue_worker_token
from controller.settings import Settings
from shared.states import AttemptState
from tests.live_server import free_port, serve
from tests.security.conftest import Api, api_routes, progress, report, run_body

# ------------------------------------------------------------------------------ body size


def test_every_body_route_refuses_an_oversized_body_before_reading_it(api: Api) -> None:
    limit = api.settings.max_request_bytes
    run_id = api.create()["id"]
    posts = [p for m, p in api_routes(api.client.app) if m == "POST"]  # type: ignore[arg-type]
    assert "/api/v1/runs/{run_id}/reports" in posts
    for path in posts:
        url = path.replace("{run_id}", str(run_id)).replace("{action}", "cancel")
        big = b'{"x": "' + b"a" * limit + b'"}'
        for headers in ({}, api.h()):  # refused before authentication: nobody makes us buffer it
            r = api.client.post(url, content=big, headers=headers | {"Content-Type": "application/json"})
            assert r.status_code == 413, (url, r.status_code)
            assert r.json()["detail"] == f"request body larger than {limit} bytes"
    with api.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1


def test_a_body_at_the_limit_is_read(api: Api) -> None:
    limit = api.settings.max_request_bytes
    body = run_body("at-limit")
    body["training"]["dataset"] = "d"
    padding = limit - len(httpx.Request("POST", "/", json=body).content)
    body["training"]["dataset"] = "d" * (
        padding + 1
    )  # exactly `limit` bytes: the schema, not 413, refuses it
    r = api.client.post("/api/v1/runs", json=body, headers=api.h())
    assert len(r.request.content) == limit
    assert r.status_code == 422


# ------------------------------------------------------------------------------ rate limiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refuses_beyond_the_burst_and_refills_per_run() -> None:
    clock = FakeClock()
    limiter = ReportRateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire(1)
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(1)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert "at most 2 requests/s" in str(refused.value)
    limiter.acquire(2)  # another run has its own bucket
    clock.now += 0.5
    limiter.acquire(1)  # one token refilled
    with pytest.raises(RateLimited):
        limiter.acquire(1)
    limiter.refund(1)  # a duplicate-only batch gives its token back
    limiter.acquire(1)
    clock.now += 60
    limiter.refund(1)  # never beyond the burst
    for _ in range(3):  # refills to the burst, never beyond
        limiter.acquire(1)
    with pytest.raises(RateLimited):
        limiter.acquire(1)
    assert limiter.refused == 3
    with pytest.raises(ValueError):
        ReportRateLimiter(rate_per_s=0)


def test_flooded_report_endpoint_answers_429_and_stores_nothing_more(api: Api) -> None:
    clock = FakeClock()
    api.client.app.state.report_limiter = ReportRateLimiter(rate_per_s=1.0, burst=5, clock=clock)  # type: ignore[attr-defined]
    run_a, run_b = api.create("flood-a")["id"], api.create("flood-b")["id"]
    token_a = api.attempt(run_a, state=AttemptState.RUNNING)
    token_b = api.attempt(run_b, state=AttemptState.RUNNING)
    codes = []
    for seq in range(20):
        r = api.client.post(
            f"/api/v1/runs/{run_a}/reports", json=report(progress(seq, 1)), headers=api.h(token_a)
        )
        codes.append(r.status_code)
    assert codes == [200] * 5 + [429] * 15
    assert r.headers["retry-after"] == "1" and "too many reports" in r.json()["detail"]
    ok = api.client.post(f"/api/v1/runs/{run_b}/reports", json=report(progress(0, 1)), headers=api.h(token_b))
    assert ok.status_code == 200, "another run is not throttled by the flood"
    bad = api.client.post(f"/api/v1/runs/{run_b}/reports", json=report(progress(1, 1)), headers=api.h("nope"))
    assert bad.status_code == 401, "unauthenticated requests never spend a run's budget"
    with api.factory() as s:
        stored = s.scalar(
            select(func.count()).select_from(WorkerEventRecord).where(WorkerEventRecord.run_id == run_a)
        )
    assert stored == 5
    clock.now += 1.0
    again = api.client.post(
        f"/api/v1/runs/{run_a}/reports", json=report(progress(99, 2)), headers=api.h(token_a)
    )
    assert again.status_code == 200


# ------------------------------------------------------------------------------ real HTTP flood


@dataclass
class Served:
    url: str
    factory: Any
    user: str
    app: Any


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = Settings(data_dir=tmp_path, run_reconciler=False, auth_required=True, port=free_port())
    upgrade_database(settings.database_url)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with factory() as s:
        user = create_user_token(s, "ops")
        s.commit()
    app = create_app(settings, session_factory=factory)
    try:
        with serve(app, settings.port) as url:
            yield Served(url, factory, user, app)
    finally:
        engine.dispose()


def _new_run(served: Served, name: str) -> tuple[int, str]:
    r = httpx.post(
        f"{served.url}/api/v1/runs",
        json=run_body(name, training_steps=10_000_000),  # room for every step the floods report
        headers={"Authorization": f"Bearer {served.user}"},
    )
    assert r.status_code == 201, r.text
    run_id = int(r.json()["id"])
    with served.factory() as s:
        s.add(Attempt(run_id=run_id, number=1, backend="local", job_name="j1", state=AttemptState.RUNNING))
        token = issue_worker_token(s, run_id, attempt=1)
        s.commit()
    return run_id, token


@dataclass
class Tally:
    codes: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: int, latency: float) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            self.latencies.append(latency)


def _flood(served: Served, run_id: int, token: str, stop: threading.Event, tally: Tally, offset: int) -> None:
    events = 5
    seq = offset
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        while not stop.is_set():
            batch = report(*(progress(seq + i, seq + i) for i in range(events)))
            seq += events
            started = time.monotonic()
            r = c.post(f"/api/v1/runs/{run_id}/reports", json=batch)
            tally.add(r.status_code, time.monotonic() - started)


def _well_behaved(served: Served, run_id: int, token: str, batches: int, tally: Tally, seq0: int = 0) -> None:
    """A worker's reporter: a batch of 10 progress events every 0.1 s, retrying 429 like
    ``worker.report_client`` does (after Retry-After)."""
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        for b in range(batches):
            batch = report(*(progress(seq0 + b * 10 + i, seq0 + b * 10 + i) for i in range(10)))
            while True:
                started = time.monotonic()
                r = c.post(f"/api/v1/runs/{run_id}/reports", json=batch)
                tally.add(r.status_code, time.monotonic() - started)
                if r.status_code != 429:
                    break
                time.sleep(float(r.headers["retry-after"]))
            assert r.status_code == 200, r.text
            time.sleep(0.1)


def _stored(served: Served, run_id: int) -> int:
    with served.factory() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(WorkerEventRecord).where(WorkerEventRecord.run_id == run_id)
            )
            or 0
        )


@pytest.mark.slow
def test_a_flooding_worker_cannot_starve_the_others(served: Served) -> None:
    flooder_run, flooder_token = _new_run(served, "flooder")
    quiet_runs = [_new_run(served, f"quiet-{i}") for i in range(2)]
    batches = 30

    # Baseline: the quiet workers alone.
    baseline = Tally()
    threads = [
        threading.Thread(target=_well_behaved, args=(served, r, t, batches, baseline)) for r, t in quiet_runs
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)

    # Flood: eight connections hammer one run as fast as they can while the quiet ones report on.
    flood, quiet = Tally(), Tally()
    stop = threading.Event()
    flooders = [
        threading.Thread(
            target=_flood, args=(served, flooder_run, flooder_token, stop, flood, 10**6 * (k + 1))
        )
        for k in range(8)
    ]
    started = time.monotonic()
    for th in flooders:
        th.start()
    time.sleep(0.5)
    workers = [
        threading.Thread(target=_well_behaved, args=(served, r, t, batches, quiet, batches * 10))
        for r, t in quiet_runs
    ]
    for th in workers:
        th.start()
    for th in workers:
        th.join(180)
    stop.set()
    for th in flooders:
        th.join(60)
    elapsed = time.monotonic() - started

    # Every quiet event got through, none was throttled.
    for run_id, _ in quiet_runs:
        assert _stored(served, run_id) == 2 * batches * 10
    assert set(quiet.codes) == {200}, quiet.codes
    # The flood was throttled to the bucket: burst + rate x time (+1 s of slack), the rest 429.
    accepted = flood.codes.get(200, 0)
    assert flood.codes.get(429, 0) > accepted > 0, flood.codes
    assert accepted <= REPORT_BURST + REPORT_RATE_PER_S * (elapsed + 1)
    assert set(flood.codes) <= {200, 429}, flood.codes
    # Bounded latency for the others: generous on a shared CI box, yet far below a starved queue.
    p95 = statistics.quantiles(quiet.latencies, n=20)[-1]
    base_p95 = statistics.quantiles(baseline.latencies, n=20)[-1]
    assert max(quiet.latencies) < 5.0, max(quiet.latencies)
    print(
        f"\nflood: {sum(flood.codes.values())} flood requests in {elapsed:.1f}s ({flood.codes}); "
        f"quiet: {len(quiet.latencies)} requests all 200, "
        f"p50 {statistics.median(quiet.latencies) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms, max {max(quiet.latencies) * 1000:.0f} ms "
        f"(alone: p50 {statistics.median(baseline.latencies) * 1000:.0f} ms, p95 {base_p95 * 1000:.0f} ms)"
    )


@pytest.mark.slow
def test_a_throttled_worker_loses_nothing(served: Served, tmp_path: Path) -> None:
    """The real reporter (worker.report_client) against a tight bucket: it is answered 429 again and
    again, backs off, spools, retries, and in the end every event is stored exactly once."""
    from worker.report_client import HttpReporter

    served.app.state.report_limiter = ReportRateLimiter(rate_per_s=4.0, burst=2)
    run_id, token = _new_run(served, "throttled")
    token_file = tmp_path / "worker.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    reporter = HttpReporter(
        url=served.url,
        run_id=run_id,
        attempt=1,
        token_file=token_file,
        batch_size=10,
        flush_interval=0.05,
        max_backoff=0.5,
    )
    events = 400
    for step in range(events):
        reporter.emit("progress", step=step, loss=1.0, lr=1e-3, tokens_seen=step)
    deadline = time.monotonic() + 120
    while _stored(served, run_id) < events and time.monotonic() < deadline:
        time.sleep(0.2)
    reporter.close(timeout=30)
    refused = served.app.state.report_limiter.refused
    assert _stored(served, run_id) == events, "a throttled worker lost events"
    assert refused > 0, "the bucket never refused: the test did not throttle"
    assert reporter.dropped == 0
    print(f"\nthrottled reporter: {events} events stored after {refused} 429 answers")


def test_limiter_defaults_cover_a_real_worker() -> None:
    """A worker flushes every 0.5 s (worker.report_client): 2 requests/s, far below the rate; a spool
    replay after an outage fits in the burst."""
    assert REPORT_RATE_PER_S >= 5 * 2
    assert REPORT_BURST >= 50


def test_the_limiter_follows_the_settings(tmp_path: Path) -> None:
    """PYRECOVER_REPORT_RATE_PER_S / PYRECOVER_REPORT_BURST tune it; the defaults are the module's."""
    default = create_app(Settings(data_dir=tmp_path, run_reconciler=False)).state.report_limiter
    assert (default.rate_per_s, default.burst) == (REPORT_RATE_PER_S, REPORT_BURST)
    tuned = Settings(data_dir=tmp_path, run_reconciler=False, report_rate_per_s=3.5, report_burst=7)
    limiter = create_app(tuned).state.report_limiter
    assert (limiter.rate_per_s, limiter.burst) == (3.5, 7)
    with pytest.raises(ValueError, match="report_burst"):
        Settings(data_dir=tmp_path, report_burst=0)
