"""Controller throughput on loopback: worker reports/s with p50/p99 latency, and ``GET /runs``
latency with 10,000 runs stored.

The controller runs as ``uvicorn`` in a subprocess (as ``pyrecover serve`` would, reconciler off)
so client threads do not share its interpreter. Simulated workers are threads, each with its own
keep-alive ``httpx`` client (built and connected before the clock starts) and its own run +
worker token. **A "report" is one event**; a request carries a batch of them. Every request is
timed, the first ones after the controller started included. Two report phases:

* **paced** (the goal's measurement): ``--paced-workers`` workers each post a batch of
  ``--paced-batch`` events every 0.5 s, the real reporter's flush interval (open loop: a late
  request is sent at once, never skipped), so the offered load is workers x batch / 0.5 s
  (default 16 x 32 / 0.5 s = 1,024 reports/s). The controller runs with its default settings,
  the per-run rate limit included. Reported: reports/s delivered, p50/p99 latency.
* **saturation**: ``--workers`` workers post batches of ``--batch`` events back to back for
  ``--seconds`` (closed loop, the per-run rate limit lifted): the most the controller can take.

Then 10,000 runs are stored and ``GET /api/v1/runs?limit=50`` is timed (first page and pages
deep in the list, with and without a state filter).

    python bench/api_load.py [--paced-workers 16] [--paced-batch 32] [--workers 8] [--batch 10]

Runs on SQLite, and on PostgreSQL too when ``PYRECOVER_TEST_POSTGRES_URL`` (or the default local
role) is reachable, in a throw-away schema. Prints a table; writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Run
from controller.services import create_run, create_user_token, first_admin, issue_worker_token
from shared.schemas import RunCreate
from shared.states import AttemptState, RunState

RESULTS = Path(__file__).parent / "results" / "api_load.json"
DEFAULT_PG = "postgresql+psycopg://pyrecover:pyrecover@127.0.0.1:5432/pyrecover_test"
SERVE = (
    "import os, uvicorn; from controller.api import create_app; from controller.settings import Settings; "
    "uvicorn.run(create_app(Settings()), host='127.0.0.1', port=int(os.environ['PYRECOVER_PORT']), "
    "log_level='warning', access_log=False)"
)


def spec(name: str) -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": name,
            "training": {
                "dataset": "d.parquet",
                "tokenizer_name_or_path": "tok",
                "training_steps": 10_000_000,
            },
            "resources": {"scheduler": "local", "time_limit": "1h"},
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


class Server:
    def __init__(self, url: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")}
        env |= {
            "PYRECOVER_DATA_DIR": str(data_dir),
            "PYRECOVER_DATABASE_URL": url,
            "PYRECOVER_PORT": str(self.port),
            "PYRECOVER_RUN_RECONCILER": "0",
        } | (extra_env or {})
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the controller did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def seed_workers(factory: Any, n: int, prefix: str) -> list[tuple[int, str]]:
    out = []
    with factory() as s:
        for i in range(n):
            run = create_run(s, spec(f"{prefix}-{i}"), owner=first_admin(s))
            run.state = RunState.RUNNING
            s.add(
                Attempt(
                    run_id=run.id, number=1, backend="local", job_name=f"b{i}", state=AttemptState.RUNNING
                )
            )
            out.append((run.id, issue_worker_token(s, run.id)))
        s.commit()
    return out


def report_phase(
    base: str, workers: list[tuple[int, str]], batch: int, seconds: float, interval: float | None = None
) -> dict[str, Any]:
    """Each worker posts ``batch`` events per request: every ``interval`` s (open loop), or back to
    back when ``interval`` is None."""
    latencies: list[list[float]] = [[] for _ in workers]
    errors = [0]
    # Clients are built and connected before the clock starts: building an httpx client costs
    # tens of ms of CPU (an SSL context), and inside the run it stole the GIL from the threads
    # whose requests were being timed. A real worker keeps one connection for its whole run.
    clients = [
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        for _, token in workers
    ]
    for client in clients:
        client.get("/healthz").raise_for_status()
    begin = time.monotonic()
    stop_at = begin + seconds

    def work(index: int, run_id: int, client: httpx.Client) -> None:
        seq = 0
        tick = 0
        # Spread the workers' phases over the interval, as independent workers would be.
        offset = (interval or 0.0) * index / len(workers)
        while time.monotonic() < stop_at:
            if interval is not None:
                due = begin + offset + tick * interval
                tick += 1
                if due >= stop_at:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
            events = []
            for _ in range(batch):
                events.append(
                    {
                        "type": "progress",
                        "seq": seq,
                        "time": time.time(),
                        "step": seq + 1,
                        "loss": 3.0,
                        "lr": 1e-3,
                        "tokens_seen": seq * 4096,
                        "tokens_per_s": 1e4,
                        "step_time": 0.1,
                    }
                )
                seq += 1
            t0 = time.perf_counter()
            r = client.post(f"/api/v1/runs/{run_id}/reports", json={"attempt": 1, "events": events})
            latencies[index].append(time.perf_counter() - t0)
            if r.status_code != 200 or r.json()["accepted"] != batch:
                errors[0] += 1

    started = time.monotonic()
    threads = [
        threading.Thread(target=work, args=(i, run_id, client))
        for i, ((run_id, _), client) in enumerate(zip(workers, clients, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for client in clients:
        client.close()
    elapsed = time.monotonic() - started
    flat = [x for per in latencies for x in per]
    return {
        "mode": "closed loop" if interval is None else f"one batch per worker every {interval:g} s",
        "offered_reports_per_s": None if interval is None else len(workers) * batch / interval,
        "workers": len(workers),
        "events_per_batch": batch,
        "requests": len(flat),
        "errors": errors[0],
        "reports_per_s": len(flat) * batch / elapsed,
        "requests_per_s": len(flat) / elapsed,
        "p50_ms": pct(flat, 0.50),
        "p99_ms": pct(flat, 0.99),
    }


def seed_runs(factory: Any, n: int) -> None:
    states = list(RunState)
    body = spec("x").model_dump(mode="json")
    with factory() as s:
        owner_id = first_admin(s).id
        s.add_all(
            Run(
                name=f"seed-{i:05d}",
                owner_id=owner_id,
                state=states[i % len(states)],
                spec=body | {"name": f"seed-{i:05d}"},
                scheduler="local",
                training_steps=1000,
            )
            for i in range(n)
        )
        s.commit()


def list_phase(base: str, token: str, requests: int) -> dict[str, Any]:
    queries = ["limit=50", "limit=50&offset=5000", "limit=50&state=RUNNING", "limit=50&offset=9900"]
    times: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for i in range(requests):
            t0 = time.perf_counter()
            r = client.get(f"/api/v1/runs?{queries[i % len(queries)]}")
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["items"], r.text
        total = client.get("/api/v1/runs?limit=1").json()["total"]
    return {"runs_stored": total, "requests": requests, "p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99)}


def bench_backend(name: str, url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    upgrade_database(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    paced_workers = seed_workers(factory, args.paced_workers, "paced")
    workers = seed_workers(factory, args.workers, "flat-out")
    with factory() as s:
        # The runs' owner (the first admin): the listing reads every run, as an admin's would.
        user = create_user_token(s, first_admin(s).name)
        s.commit()
    try:
        server = Server(url, data_dir)  # default settings, rate limit included
        try:
            paced = report_phase(server.base, paced_workers, args.paced_batch, args.seconds, interval=0.5)
        finally:
            server.stop()
        unlimited = {"PYRECOVER_REPORT_RATE_PER_S": "1e9", "PYRECOVER_REPORT_BURST": "1000000000"}
        server = Server(url, data_dir, unlimited)
        try:
            reports = report_phase(server.base, workers, args.batch, args.seconds)
            seed_runs(factory, 10_000 - args.workers - args.paced_workers)
            listing = list_phase(server.base, user, args.list_requests)
        finally:
            server.stop()
    finally:
        engine.dispose()
    return {"backend": name, "paced": paced, "reports": reports, "list_runs": listing}


def pg_schema_url() -> tuple[str, Any] | None:
    base = os.environ.get("PYRECOVER_TEST_POSTGRES_URL", DEFAULT_PG)
    try:
        admin = create_engine(base, connect_args={"connect_timeout": 3})
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); SQLite only", file=sys.stderr)
        return None
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paced-workers", type=int, default=16, help="Workers of the paced phase.")
    parser.add_argument("--paced-batch", type=int, default=32, help="Events per request, paced phase.")
    parser.add_argument("--workers", type=int, default=8, help="Workers of the saturation phase.")
    parser.add_argument("--batch", type=int, default=10, help="Events per request, saturation phase.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each report phase.")
    parser.add_argument("--list-requests", type=int, default=400)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite:///{Path(tmp, 'bench.db').as_posix()}"
        results.append(bench_backend("sqlite", sqlite, Path(tmp), args))
        pg = None if args.no_postgres else pg_schema_url()
        if pg is not None:
            try:
                results.append(bench_backend("postgresql", pg[0], Path(tmp), args))
            finally:
                pg[1]()
    print(
        f"{'backend':<11} {'phase':<11} {'reports/s':>10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6}"
    )
    for r in results:
        for phase in ("paced", "reports"):
            rep = r[phase]
            print(
                f"{r['backend']:<11} {'paced' if phase == 'paced' else 'saturation':<11} "
                f"{rep['reports_per_s']:>10.0f} {rep['requests_per_s']:>8.1f} "
                f"{rep['p50_ms']:>7.1f} {rep['p99_ms']:>7.1f} {rep['errors']:>6}"
            )
        lst = r["list_runs"]
        print(
            f"{r['backend']:<11} GET /api/v1/runs with {lst['runs_stored']} runs: "
            f"p50 {lst['p50_ms']:.1f} ms, p99 {lst['p99_ms']:.1f} ms"
        )
    print(
        f"a report = one worker event. paced: {args.paced_workers} workers x {args.paced_batch} events "
        f"every 0.5 s (offered {args.paced_workers * args.paced_batch / 0.5:.0f} reports/s, default "
        f"settings); saturation: {args.workers} workers x {args.batch} events back to back. Goals (2 cores, "
        "SQLite): >= 1000 reports/s with p99 < 50 ms; GET /runs p99 < 100 ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"args": vars(args), "cpus": os.cpu_count(), "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
