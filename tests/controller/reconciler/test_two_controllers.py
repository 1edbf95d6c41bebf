"""Two reconcilers (two engines, as two controller processes have) on one PostgreSQL schema.

The scheduler fake is shared, as the real cluster is: a job one controller submitted is visible to
the other's ``find_by_name`` once its ``submit`` has returned, not before — the window in which a
second controller could take an in-flight intent for an abandoned one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import FakeScheduler
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Event, Run
from controller.reconciler import Reconciler
from controller.scheduler.base import JobSpec, JobStatus
from controller.services import first_admin
from controller.settings import Settings
from shared.schemas import RunCreate
from shared.states import AttemptState, RunState
from shared.states import SchedulerJobState as J


@dataclass
class SharedScheduler(FakeScheduler):
    """Thread-safe; every job fails at once. ``hold_first`` parks the first submit until released."""

    hold_first: bool = False
    calls: list[str] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, spec: JobSpec) -> str:
        with self.lock:
            self.calls.append(spec.job_name)
            first = len(self.calls) == 1
        if first and self.hold_first:
            self.entered.set()
            assert self.release.wait(30), "the test never released the first submit"
        with self.lock:
            job_id = super().submit(spec)
            self.states[job_id] = JobStatus(job_id=job_id, state=J.FAILED, exit_code=1)
            return job_id

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self.lock:
            return super().poll(job_ids)

    def find_by_name(self, job_name: str) -> str | None:
        with self.lock:
            return super().find_by_name(job_name)


class Controllers:
    def __init__(self, url: str, tmp_path: Path, sched: SharedScheduler) -> None:
        upgrade_database(url)
        self.settings = Settings(
            data_dir=tmp_path, database_url=url, reconcile_interval_s=3600, worker_python="python3"
        )
        self.engines: list[Engine] = [make_engine(url) for _ in range(2)]
        factories: list[Callable[[], Session]] = [make_session_factory(e) for e in self.engines]
        self.factory = factories[0]
        self.a, self.b = (
            Reconciler(settings=self.settings, session_factory=f, schedulers={"local": sched})
            for f in factories
        )

    def create(self, name: str) -> int:
        spec = RunCreate.model_validate(
            {
                "name": name,
                "training": {"dataset": "d.parquet", "tokenizer_name_or_path": "tok", "training_steps": 10},
                "resources": {"scheduler": "local", "time_limit": "1m"},
                "policy": {"backoff_seconds": 0, "max_failures_without_progress": 3},
            }
        )
        with self.factory() as s:
            run = Run(
                name=name,
                owner_id=first_admin(s).id,
                spec=spec.model_dump(mode="json"),
                scheduler="local",
                training_steps=10,
            )
            s.add(run)
            s.commit()
            return int(run.id)

    def attempts(self) -> list[Attempt]:
        with self.factory() as s:
            return list(s.scalars(select(Attempt).order_by(Attempt.run_id, Attempt.number)).all())

    def close(self) -> None:
        for e in self.engines:
            e.dispose()


@pytest.fixture
def controllers(pg_url: str, tmp_path: Path) -> Iterator[Controllers]:
    c = Controllers(pg_url, tmp_path, SharedScheduler(hold_first=True))
    yield c
    c.close()


def test_an_in_flight_submission_is_not_recovered_by_the_other_controller(controllers: Controllers) -> None:
    sched = controllers.a.scheduler("local")
    assert isinstance(sched, SharedScheduler)
    run_id = controllers.create("race-inflight")
    a_pass = threading.Thread(target=controllers.a.run_once)
    a_pass.start()
    try:
        # A committed its intent and sits in the scheduler call; the job is not known by name yet.
        assert sched.entered.wait(30)
        [intent] = controllers.attempts()
        assert intent.state == AttemptState.SUBMITTING and sched.find_by_name(intent.job_name) is None
        controllers.b.run_once()  # B's recovery must leave A's intent alone
        assert sched.calls == [f"pyrecover-r{run_id}-a1"]
    finally:
        sched.release.set()
        a_pass.join(30)
    [attempt] = controllers.attempts()
    assert attempt.state == AttemptState.PENDING and attempt.external_id == "job-1"


def test_racing_reconcilers_submit_each_attempt_exactly_once(pg_url: str, tmp_path: Path) -> None:
    sched = SharedScheduler()
    c = Controllers(pg_url, tmp_path, sched)
    try:
        runs = [c.create(f"race-{i}") for i in range(12)]
        errors: list[BaseException] = []

        def passes(rec: Reconciler) -> None:
            try:
                for _ in range(12):
                    rec.run_once()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=passes, args=(r,)) for r in (c.a, c.b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        # Settle whatever the last racing passes left (an attempt ended, a run due).
        for _ in range(8):
            c.a.run_once()
        attempts = c.attempts()
        dupes = [name for name, n in Counter(sched.calls).items() if n > 1]
        assert not dupes, f"submitted twice: {dupes}"
        assert sorted(sched.calls) == sorted(a.job_name for a in attempts)
        with c.factory() as s:
            states = {r.id: r.state for r in s.scalars(select(Run)).all()}
            ended_events = Counter(
                e.run_id
                for e in s.scalars(select(Event).where(Event.kind == "attempt")).all()
                if (e.data or {}).get("to") == "ENDED"
            )
        for run_id in runs:
            numbers = [a.number for a in attempts if a.run_id == run_id]
            # Every job fails: three attempts without progress, then the run is FAILED.
            assert numbers == [1, 2, 3], (run_id, numbers)
            assert states[run_id] == RunState.FAILED
            assert ended_events[run_id] == 3, "an attempt's end was applied twice"
    finally:
        c.close()
