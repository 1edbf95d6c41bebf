"""The database locked or briefly unavailable while a run trains and while it is resubmitted.

Two outages per run, on a real controller process with the ``local`` backend:

1. while attempt 1 trains (the worker's reports cannot be stored; user requests arrive);
2. the moment the reconciler has recorded the SUBMITTING intent of attempt 2 (after the API's
   "stop" action ended attempt 1): the outage hits between "intent committed" and "job id
   recorded", where a careless retry would submit the job a second time.

SQLite (``test_sqlite_locked``): a second connection holds ``BEGIN EXCLUSIVE`` for 20 s, longer
than the controller's 15 s busy timeout, so writes really fail with "database is locked".
PostgreSQL (``test_postgres_restarted``): the local cluster is stopped for a few seconds and
started again (``pg_ctlcluster``), every pooled connection dies.

Checked: requests during the outage either succeed or fail cleanly with a 5xx (no hang, no crash,
the controller serves normally afterwards); the reconciler recovers; the run completes with
attempts 1..n, no job submitted twice, never two workers at once, and the metric series complete
(the worker retried/spooled its reports).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos import Deadline, LogTail, chaos_rng, record
from ctlrun import (
    WorkerCensus,
    assert_chain_sound,
    attempt_log,
    attempts,
    make_controller,
    measure_step_seconds,
    metric_steps,
    submit,
    training,
    wait_terminal,
)
from local_harness import Controller, kill_leftover_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_S = 32  # seconds of training the run needs: attempt 1 must outlive the first outage


@dataclass
class Probe:
    """User requests sent while the database is out: what came back, and how long it took."""

    results: list[tuple[str, int | str, float]] = field(default_factory=list)

    def send(self, ctl: Controller, method: str, path: str, **kw: Any) -> None:
        t0 = time.monotonic()
        try:
            resp = httpx.request(
                method,
                f"{ctl.url}/api/v1{path}",
                headers={"Authorization": f"Bearer {ctl.token}"},
                timeout=60,
                **kw,
            )
            outcome: int | str = resp.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        self.results.append((f"{method} {path}", outcome, round(time.monotonic() - t0, 1)))

    def check(self) -> None:
        for what, outcome, seconds in self.results:
            assert isinstance(outcome, int), f"{what}: no HTTP answer ({outcome}) after {seconds} s"
            assert outcome < 300 or outcome == 503, f"{what}: {outcome} is neither success nor a clean 503"
            assert seconds < 45, f"{what} hung for {seconds} s"


def _during(outage: Callable[[], None], requests: Callable[[], None]) -> None:
    """Run the outage in a thread and the user requests meanwhile; wait for both."""
    thread = threading.Thread(target=outage)
    thread.start()
    try:
        time.sleep(1.0)
        requests()
    finally:
        thread.join(120)


def _scenario(
    ctl: Controller,
    sample: tuple[Path, Path],
    zygote: Any,
    tmp: Path,
    bound: Deadline,
    *,
    outage: Callable[[], None],
    submitting: Callable[[], bool],
) -> dict[str, Any]:
    steps = int(TRAIN_S / measure_step_seconds(zygote, sample, tmp / "calibration"))
    census = WorkerCensus(ctl.data_dir)
    probe = Probe()
    try:
        run_id = submit(ctl, "dbout", training(sample, steps, tmp / "ckpt"), time_limit="900s")
        tail = LogTail(attempt_log(ctl, run_id, 1))
        bound.wait_for(lambda: tail.caught_up(3), "attempt 1 to train", every=0.1)

        def requests() -> None:
            probe.send(ctl, "GET", f"/runs/{run_id}")
            probe.send(ctl, "POST", f"/runs/{run_id}/actions", json={"action": "checkpoint"})
            probe.send(ctl, "GET", f"/runs/{run_id}/metrics")

        _during(outage, requests)
        assert not tail.caught_up(steps), "attempt 1 finished during the outage: the run is too short"
        # Let the reports the outage held up inside the controller drain first: a request whose
        # client already gave up can still consume the "stop" action below, and its reply (the only
        # way the action reaches the worker) goes nowhere (a known bug: actions are consumed on
        # delivery, not on acknowledgement). This test is about the database, not that race.
        time.sleep(3)
        ctl.api("POST", f"/runs/{run_id}/actions", json={"action": "stop"})

        def submitting_or_over() -> bool:
            return submitting() or tail.caught_up(steps)

        bound.wait_for(submitting_or_over, "the SUBMITTING intent of attempt 2", every=0.002)
        assert not tail.caught_up(steps), "attempt 1 never stopped: the stop action was lost"
        outage()
        run = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        assert run["state"] == "COMPLETED", (run, jobs)
        assert len(jobs) >= 2, jobs
        assert_chain_sound(ctl, jobs)
        assert census.max_alive <= 1, f"{census.max_alive} workers of the run were alive at once"
        expected = set(range(1, steps + 1))
        with contextlib.suppress(AssertionError):
            bound.wait_for(lambda: expected <= metric_steps(ctl, run_id), "the spool", every=1.0, limit=30)
        missing = sorted(expected - metric_steps(ctl, run_id))
        assert not missing, f"{len(missing)} metric steps missing, e.g. {missing[:20]}"
        probe.check()
        assert ctl.proc is not None and ctl.proc.poll() is None, "the controller died"
        health = httpx.get(f"{ctl.url}/api/v1/healthz", timeout=10)
        assert health.status_code == 200, health.text
    finally:
        census.stop()
    logs = "".join(p.read_text(errors="replace") for p in ctl.data_dir.glob("controller-*.log"))
    return {
        "steps": steps,
        "attempts": len(jobs),
        "requests": probe.results,
        "failed_passes": logs.count("reconciler pass failed"),
        "server_errors": sum(1 for _, outcome, _ in probe.results if outcome in range(500, 600)),
    }


# ------------------------------------------------------------------------------------------ SQLite
def test_sqlite_locked(sample: tuple[Path, Path], zygote: Any, tmp_path: Path) -> None:
    rng = chaos_rng("sqlite-locked")
    bound = Deadline(420, "SQLite locked")
    started = time.monotonic()
    ctl = make_controller(tmp_path / "controller")
    db = ctl.data_dir / "pyrecover.db"
    assert db.exists(), f"expected the SQLite database at {db}"
    hold = 20.0 + rng.uniform(0, 3)  # beyond the controller's 15 s busy timeout: writes do fail

    def lock() -> None:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            time.sleep(hold)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)

    def submitting() -> bool:
        return bool(reader.execute("SELECT count(*) FROM attempts WHERE state = 'SUBMITTING'").fetchone()[0])

    ctl.start()
    try:
        figures = _scenario(ctl, sample, zygote, tmp_path, bound, outage=lock, submitting=submitting)
    finally:
        reader.close()
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)
    print(f"[chaos] {figures}")
    record(
        "SQLite locked (exclusive lock held 20-23 s > 15 s busy timeout), twice",
        path="controller + local backend; during training and mid-submission",
        trials=2,
        survived=2,
        data_lost="none: run COMPLETED, metric steps complete, no duplicate job",
        seconds=round(time.monotonic() - started, 1),
        **{k: v for k, v in figures.items() if k != "requests"},
    )


# -------------------------------------------------------------------------------------- PostgreSQL
def _postgres_base_url() -> str:
    return os.environ.get(
        "PYRECOVER_TEST_POSTGRES_URL",
        "postgresql+psycopg://pyrecover:pyrecover@127.0.0.1:5432/pyrecover_test",
    )


def _local_cluster(url: str) -> tuple[str, str] | None:
    """(version, name) of the Debian cluster serving ``url`` on this machine, else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.host not in ("127.0.0.1", "localhost") or shutil.which("pg_lsclusters") is None:
        return None
    port = str(parsed.port or 5432)
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30, check=False)
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2] == port and cols[3] == "online":
            return cols[0], cols[1]
    return None


def _other_clients(engine: Any, app: str) -> list[str]:
    """Client connections that are not ours: a restart would break somebody else's test."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(application_name, '') || '@' || coalesce(datname, '') FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND coalesce(application_name, '') <> :app"
            ),
            {"app": app},
        ).all()
    return [r[0] for r in rows]


@pytest.fixture
def pg_schema_url() -> Iterator[tuple[str, tuple[str, str], str]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = _postgres_base_url()
    try:
        admin = create_engine(base, connect_args={"connect_timeout": 5})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {make_url(base).render_as_string()}: {exc}")
    cluster = _local_cluster(base)
    if cluster is None:
        admin.dispose()
        pytest.skip("PostgreSQL is not a local pg_ctlcluster cluster: cannot restart it")
    if os.geteuid() != 0:
        admin.dispose()
        pytest.skip("restarting PostgreSQL needs root (pg_ctlcluster)")
    schema = f"fault_{uuid.uuid4().hex[:10]}"
    app = f"pyrecover-fault-{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()  # an idle pooled connection of ours would count as "another client"
    url = (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}", "application_name": app})
        .render_as_string(hide_password=False)
    )
    try:
        yield url, cluster, app
    finally:
        with contextlib.suppress(Exception), admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_restarted(
    sample: tuple[Path, Path], zygote: Any, tmp_path: Path, pg_schema_url: tuple[str, tuple[str, str], str]
) -> None:
    from sqlalchemy import create_engine, text

    url, (version, name), app = pg_schema_url
    rng = chaos_rng("postgres-restart")
    bound = Deadline(420, "PostgreSQL restarted")
    started = time.monotonic()
    watcher = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    outages: list[float] = []

    def restart() -> None:
        # Never restart the server under somebody else's connections (another test, a developer's
        # psql): wait a little for them to go, else fail saying why.
        end = time.monotonic() + 60
        while (others := _other_clients(watcher, app)) and time.monotonic() < end:
            time.sleep(1)
        assert not others, f"other clients use this PostgreSQL; not restarting it under them: {others}"
        watcher.dispose()
        down = rng.uniform(2.0, 6.0)
        t0 = time.monotonic()
        subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True, timeout=120)
        try:
            time.sleep(down)
        finally:
            subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, timeout=120)
        outages.append(round(time.monotonic() - t0, 1))

    query = text("SELECT count(*) FROM attempts WHERE state = 'SUBMITTING'")

    def submitting() -> bool:
        with watcher.connect() as conn:
            return bool(conn.execute(query).scalar())

    ctl = make_controller(tmp_path / "controller", database_url=url)
    ctl.start()
    try:
        figures = _scenario(ctl, sample, zygote, tmp_path, bound, outage=restart, submitting=submitting)
    finally:
        watcher.dispose()
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)
    print(f"[chaos] {figures}; outages {outages}")
    record(
        "PostgreSQL stopped 2-6 s and restarted (pg_ctlcluster), twice",
        path="controller + local backend; during training and mid-submission",
        trials=2,
        survived=2,
        data_lost="none: run COMPLETED, metric steps complete, no duplicate job",
        outage_seconds=outages,
        seconds=round(time.monotonic() - started, 1),
        **{k: v for k, v in figures.items() if k != "requests"},
    )
