"""Dashboard server time: the runs page over 10,000 runs, a run page over 100,000 metric points.

Builds the real app (``create_app``) over a temporary SQLite DB with the reconciler off, seeds it
in bulk, and times requests in-process through httpx's ASGI transport (no socket, so the figure
is server time: routing, queries, downsampling, template rendering). For the run page the
browser loads the HTML and then the chart data, so both are timed and their sizes summed; chart
polls after the first are served from the dashboard's per-run series cache (only new rows are
read). As a baseline in the same process, every point of the four series is read through the ORM
(``services.list_metrics``) and serialised, which is what a page without downsampling would send.

    python bench/dashboard.py [--runs 10000] [--points 100000] [--requests 200] [--budget-s 120]

Prints a table and writes bench/results/dashboard.json. Goals: p99 < 300 ms for both pages,
run page payload < 500 KB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "dashboard.json"
GOAL_P99_MS = 300.0
GOAL_PAYLOAD_KB = 500.0


@dataclass
class Timing:
    name: str
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    bytes: int


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


async def _time(client: httpx.AsyncClient, name: str, url: str, n: int, deadline: float) -> Timing:
    samples: list[float] = []
    size = 0
    await client.get(url)  # warm caches (templates compiled, static hashes) like a running server
    for _ in range(n):
        if time.monotonic() > deadline and len(samples) >= 20:
            break
        t0 = time.perf_counter()
        resp = await client.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        resp.raise_for_status()
        size = len(resp.content)
    return Timing(
        name=name,
        requests=len(samples),
        p50_ms=statistics.median(samples),
        p99_ms=_percentile(samples, 0.99),
        max_ms=max(samples),
        bytes=size,
    )


STATES = ("PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
REASONS = ("deadline_stop", "deadline_stop", "deadline_stop", "preempted", "node_fail", "failed")


def bulk_seed(factory: Any, *, runs: int, points: int) -> int:
    """``runs`` runs (states round-robin, 1–3 attempts each) and ``points`` metric points on the newest
    RUNNING run, inserted in bulk. Returns that run's id."""
    from datetime import UTC, datetime, timedelta

    from controller.db.models import Attempt, Metric, Run
    from shared.schemas import RunCreate

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    spec = RunCreate.model_validate(
        {
            "name": "bench",
            "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 200_000},
            "resources": {"scheduler": "slurm", "time_limit": "04:00:00"},
        }
    ).model_dump(mode="json")
    from controller.services import first_admin

    with factory() as session, session.begin():
        owner_id = first_admin(session).id
    run_rows, attempt_rows = [], []
    for i in range(1, runs + 1):
        state = STATES[i % len(STATES)]
        n_attempts = 0 if state == "PENDING" else 1 + i % 3
        run_rows.append(
            {
                "id": i,
                "name": f"bench-{i:05d}",
                "owner_id": owner_id,
                "state": state,
                "spec": spec | {"name": f"bench-{i:05d}"},
                "scheduler": "slurm",
                "training_steps": 200_000,
                "current_step": (i * 37) % 200_000,
                "attempts_count": n_attempts,
                "created_at": t0,
                "updated_at": t0 + timedelta(seconds=i),
            }
        )
        for n in range(1, n_attempts + 1):
            last = n == n_attempts
            live = last and state in ("QUEUED", "RUNNING")
            attempt_rows.append(
                {
                    "run_id": i,
                    "number": n,
                    "backend": "slurm",
                    "job_name": f"pyrecover-{i}-{n}",
                    "external_id": str(100_000 + 3 * i + n),
                    "state": ("PENDING" if state == "QUEUED" else "RUNNING") if live else "ENDED",
                    "submit_time": t0 + timedelta(hours=n),
                    "start_time": t0 + timedelta(hours=n, minutes=2),
                    "end_time": None if live else t0 + timedelta(hours=n + 1),
                    "end_reason": None if live else ("finished" if last else REASONS[(i + n) % len(REASONS)]),
                    "step_at_start": 0,
                }
            )
    target = max(r["id"] for r in run_rows if r["state"] == "RUNNING")
    per_attempt = -(-points // 4)
    metric_rows = [
        {
            "run_id": target,
            "attempt": 1 + s // per_attempt,
            "step": s,
            "time": t0 + timedelta(seconds=s),
            "loss": 2.0 + 8.0 / (1 + s / 500) + 0.05 * ((s * 7919) % 101) / 101,
            "lr": 3e-4,
            "tokens_per_s": 40_000.0 + (s % 997),
            "step_time": 0.4,
            "mfu": 0.4,
            "tokens_seen": s * 4096,
        }
        for s in range(points)
    ]
    with factory() as session, session.begin():
        session.execute(Run.__table__.insert(), run_rows)
        session.execute(Attempt.__table__.insert(), attempt_rows)
        for k in range(0, len(metric_rows), 20_000):
            session.execute(Metric.__table__.insert(), metric_rows[k : k + 20_000])
    return target


def _naive_series(factory: Any, run_id: int, n: int) -> Timing:
    """Baseline: every point of every chart, read through the ORM (``services.list_metrics``)."""
    from controller.services import list_metrics

    samples, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        with factory() as session:
            rows = list_metrics(session, run_id)
            body = {
                key: {"x": [m.step for m in rows], "y": [getattr(m, key) for m in rows]}
                for key in ("loss", "lr", "tokens_per_s", "mfu")
            }
            size = len(json.dumps(body, separators=(",", ":")))
        samples.append((time.perf_counter() - t) * 1000)
    return Timing(
        "baseline: every point via the ORM",
        n,
        statistics.median(samples),
        _percentile(samples, 0.99),
        max(samples),
        size,
    )


def _make_app(tmp: Path) -> tuple[Any, Any]:
    from controller.db import make_engine, make_session_factory, upgrade_database
    from controller.settings import Settings

    settings = Settings(data_dir=tmp, run_reconciler=False, host="127.0.0.1")
    upgrade_database(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    from controller.api import create_app

    return create_app(settings, session_factory=factory), factory


def _signed_in(factory: Any) -> dict[str, str]:
    """The session cookie of the database's first user (an admin: every run is on its pages)."""
    from controller.services import first_admin
    from controller.services.sessions import open_session
    from controller.web.security import SESSION_COOKIE

    with factory() as session, session.begin():
        return {SESSION_COOKIE: open_session(session, first_admin(session))}


async def _measure(app: Any, factory: Any, run_id: int, n: int, budget_s: float) -> list[Timing]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
    deadline = time.monotonic() + budget_s
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8000", timeout=120, cookies=_signed_in(factory)
    ) as client:
        share = budget_s / 4
        return [
            await _time(
                client, "runs page (first 50 of all)", "/", n, min(deadline, time.monotonic() + share)
            ),
            await _time(client, "runs page, state filter", "/?state=RUNNING", n, time.monotonic() + share),
            await _time(client, "run page HTML", f"/runs/{run_id}", n, time.monotonic() + share),
            await _time(
                client,
                "run chart data (1000 pts)",
                f"/runs/{run_id}/series?max_points=1000",
                n,
                time.monotonic() + share,
            ),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per page (fewer if the budget ends)"
    )
    parser.add_argument("--budget-s", type=float, default=120.0, help="time for all measurements")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-") as tmp:
        app, factory = _make_app(Path(tmp))
        t0 = time.perf_counter()
        run_id = bulk_seed(factory, runs=args.runs, points=args.points)
        seed_s = time.perf_counter() - t0
        timings = asyncio.run(_measure(app, factory, run_id, args.requests, args.budget_s))
        timings.append(_naive_series(factory, run_id, 3))

    page_html, chart, baseline = timings[2], timings[3], timings[4]
    payload_kb = (page_html.bytes + chart.bytes) / 1024
    runs_p99 = max(timings[0].p99_ms, timings[1].p99_ms)
    run_p99 = page_html.p99_ms + chart.p99_ms
    print(f"seeded {args.runs} runs and {args.points} metric points in {seed_s:.1f} s\n")
    print(f"{'request':38} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'KB':>9}")
    for t in timings:
        print(
            f"{t.name:38} {t.requests:5d} {t.p50_ms:8.1f} {t.p99_ms:8.1f} {t.max_ms:8.1f} "
            f"{t.bytes / 1024:9.1f}"
        )
    print()
    print(f"runs page p99 {runs_p99:.1f} ms (goal < {GOAL_P99_MS:.0f})")
    print(
        f"run page p99 (HTML + chart data) {run_p99:.1f} ms (goal < {GOAL_P99_MS:.0f}), "
        f"payload {payload_kb:.1f} KB (goal < {GOAL_PAYLOAD_KB:.0f}); "
        f"sending every point instead: {baseline.bytes / 1024:.0f} KB, "
        f"{baseline.bytes / max(chart.bytes, 1):.0f}x the downsampled data"
    )
    result = {
        "runs": args.runs,
        "metric_points": args.points,
        "timings": [asdict(t) for t in timings],
        "runs_page_p99_ms": runs_p99,
        "run_page_p99_ms": run_p99,
        "run_page_payload_kb": payload_kb,
        "baseline_all_points_kb": baseline.bytes / 1024,
        "goals": {"p99_ms": GOAL_P99_MS, "payload_kb": GOAL_PAYLOAD_KB},
        "met": runs_p99 < GOAL_P99_MS and run_p99 < GOAL_P99_MS and payload_kb < GOAL_PAYLOAD_KB,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
