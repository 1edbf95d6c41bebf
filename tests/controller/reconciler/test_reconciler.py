"""The reconcile pass on a real SQLite database, with a fake scheduler and a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock, FakeScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Attempt, Checkpoint, Event, Run, WorkerEventRecord
from controller.db.types import to_datetime
from controller.reconciler import Reconciler
from controller.services import first_admin
from controller.settings import Settings
from shared.checkpoint_manifest import file_crc32
from shared.schemas import RunCreate
from shared.states import AttemptState, RunState
from shared.states import SchedulerJobState as J


class World:
    def __init__(self, tmp_path: Path, scheduler: FakeScheduler, *, verify: bool = False) -> None:
        # The fake scheduler's jobs write no files: the controller verifies checkpoints only where a
        # test writes them (verify=True).
        self.settings = Settings(
            data_dir=tmp_path,
            reconcile_interval_s=3600,
            worker_python="python3",
            verify_checkpoints=[scheduler.name] if verify else [],
        )
        upgrade_database(self.settings.database_url)
        self.factory: Callable[[], Session] = make_session_factory(make_engine(self.settings.database_url))
        self.clock = FakeClock()
        self.sched = scheduler
        self.rec = Reconciler(
            settings=self.settings,
            session_factory=self.factory,
            schedulers={scheduler.name: scheduler},
            clock=self.clock,
        )

    def create(self, steps: int = 100, **policy: Any) -> int:
        spec = RunCreate.model_validate(
            {
                "name": f"run{self.clock.now:.0f}",
                "training": {
                    "dataset": "d.parquet",
                    "tokenizer_name_or_path": "tok",
                    "training_steps": steps,
                    "lr_warmup_steps": 1,
                },
                "resources": {"scheduler": self.sched.name, "time_limit": "1m"},
                "policy": {"backoff_seconds": 10, "max_failures_without_progress": 2, **policy},
            }
        )
        with self.factory() as s:
            run = Run(
                name=spec.name,
                owner_id=first_admin(s).id,
                spec=spec.model_dump(mode="json"),
                scheduler=self.sched.name,
                training_steps=steps,
            )
            s.add(run)
            s.commit()
            return int(run.id)

    def tick(self) -> None:
        self.rec.run_once()

    def run(self, run_id: int) -> Run:
        with self.factory() as s:
            run = s.get(Run, run_id)
            assert run is not None
            s.expunge(run)
            return run

    def attempts(self, run_id: int) -> list[Attempt]:
        with self.factory() as s:
            rows = s.scalars(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.number)).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    def report(self, run_id: int, attempt: int, *events: dict[str, Any]) -> None:
        """Worker events as the report endpoint stores them."""
        with self.factory() as s:
            for i, e in enumerate(events):
                payload = {k: v for k, v in e.items() if k not in ("type", "seq")}
                s.add(
                    WorkerEventRecord(
                        run_id=run_id,
                        attempt=attempt,
                        seq=e.get("seq", 100 + i),
                        type=e["type"],
                        time=to_datetime(self.clock.now),
                        payload=payload,
                    )
                )
            s.commit()

    def step_dir(self, run_id: int, step: int) -> Path:
        run = self.run(run_id)
        return (
            self.settings.resolve_checkpoint_dir(run.spec["training"]["checkpoint_dir"])
            / run.name
            / f"step-{step}"
        )

    def checkpoint(self, run_id: int, attempt: int, step: int, path: str | None = None) -> None:
        """A checkpoint row as a report records it (at the run's own step directory by default)."""
        where = path or str(self.step_dir(run_id, step))
        with self.factory() as s:
            s.add(Checkpoint(run_id=run_id, attempt=attempt, step=step, path=where, format="dcp"))
            s.commit()

    def commit_on_disk(self, run_id: int, step: int, *, corrupt: bool = False) -> Path:
        """A committed checkpoint directory as the worker writes it: a data file and its manifest."""
        directory = self.step_dir(run_id, step)
        directory.mkdir(parents=True)
        (directory / "checkpoint.pt").write_bytes(b"weights" * 100)
        size, crc = file_crc32(directory / "checkpoint.pt")
        files = {"checkpoint.pt": {"size": size, "checksum": "00000000" if corrupt else crc}}
        manifest = {"step": step, "world_size": 1, "format": "vanilla", "files": files, "size_bytes": size}
        (directory / "manifest.json").write_text(json.dumps(manifest))
        return directory

    def cancel(self, run_id: int) -> None:
        with self.factory() as s:
            run = s.get(Run, run_id)
            assert run is not None
            run.cancel_requested = True
            s.commit()

    def events(self, run_id: int) -> list[Event]:
        with self.factory() as s:
            return list(s.scalars(select(Event).where(Event.run_id == run_id)).all())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path, FakeScheduler())


def test_submit_then_running_then_walltime_stop_then_resubmit(world: World) -> None:
    run_id = world.create()
    world.tick()
    [a1] = world.attempts(run_id)
    assert (
        a1.state == AttemptState.PENDING
        and a1.external_id == "job-1"
        and a1.job_name == f"pyrecover-r{run_id}-a1"
    )
    assert world.run(run_id).state == RunState.QUEUED
    assert len(world.sched.submitted) == 1 and world.sched.submitted[0].attempt == 1

    world.sched.set("job-1", J.RUNNING, deadline=world.clock.now + 60)
    world.tick()
    assert world.run(run_id).state == RunState.RUNNING
    assert world.attempts(run_id)[0].state == AttemptState.RUNNING

    world.checkpoint(run_id, 1, 40)
    world.report(run_id, 1, {"type": "stopping", "step": 40, "reason": "deadline"})
    world.tick()
    assert world.attempts(run_id)[0].state == AttemptState.STOPPING
    assert len(world.sched.submitted) == 1  # local backend: no pre-queue

    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    a1, a2 = world.attempts(run_id)
    assert a1.state == AttemptState.ENDED and a1.end_reason == "deadline_stop" and a1.step_at_end == 40
    assert a2.number == 2 and a2.external_id == "job-2" and a2.step_at_start == 40
    assert world.run(run_id).state == RunState.QUEUED


def test_completes_when_all_steps_are_committed(world: World) -> None:
    run_id = world.create(steps=50)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.checkpoint(run_id, 1, 50)
    world.report(run_id, 1, {"type": "finished", "step": 50})
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    [a1] = world.attempts(run_id)
    assert a1.end_reason == "finished"
    assert world.run(run_id).state == RunState.COMPLETED
    world.tick()
    assert len(world.sched.submitted) == 1


def test_a_finished_claim_without_a_checkpoint_is_not_believed(world: World) -> None:
    """The issue's case: 'finished' at step 3 of 100 made the run COMPLETED."""
    run_id = world.create(steps=100)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.report(run_id, 1, {"type": "finished", "step": 3})
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    [a1] = world.attempts(run_id)  # the next one waits out the failure's backoff
    assert a1.end_reason == "failed"
    assert "the worker reported finished, but the controller holds no committed checkpoint at step 100" in (
        a1.error or ""
    )
    assert world.run(run_id).state == RunState.QUEUED
    security = [e for e in world.events(run_id) if e.kind == "security"]
    assert len(security) == 1 and "not believed" in security[0].message


def test_a_checkpoint_recorded_outside_the_run_does_not_complete_it(world: World) -> None:
    """A row left by the old, unchecked ingest (the issue's '/etc/shadow' at step 100)."""
    run_id = world.create(steps=100)
    world.tick()
    world.checkpoint(run_id, 1, 100, path="/etc/shadow")
    world.report(run_id, 1, {"type": "finished", "step": 100})
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    assert world.attempts(run_id)[0].end_reason == "failed"
    assert "outside the run's checkpoint directory" in (world.attempts(run_id)[0].error or "")
    assert world.run(run_id).state == RunState.QUEUED


def test_where_the_controller_sees_the_files_it_verifies_the_final_checkpoint(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=50)
    world.tick()
    # Reported, but the files on disk do not match their manifest: not complete, resubmitted.
    world.checkpoint(run_id, 1, 50)
    directory = world.commit_on_disk(run_id, 50, corrupt=True)
    world.report(run_id, 1, {"type": "finished", "step": 50})
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    [a1] = world.attempts(run_id)
    assert a1.end_reason == "failed" and "failed verification: checkpoint.pt: checksum" in (a1.error or "")
    assert world.run(run_id).state == RunState.QUEUED
    world.clock.advance(11)  # the failure's backoff
    world.tick()
    a2 = world.attempts(run_id)[1]
    # The next attempt rewrites the step (the worker quarantines a corrupt checkpoint): complete.
    (directory / "manifest.json").unlink()
    (directory / "checkpoint.pt").unlink()
    directory.rmdir()
    world.commit_on_disk(run_id, 50)
    world.report(run_id, 2, {"type": "finished", "step": 50})
    world.sched.set(str(a2.external_id), J.COMPLETED, exit_code=0)
    world.tick()
    assert world.attempts(run_id)[1].end_reason == "finished"
    assert world.run(run_id).state == RunState.COMPLETED


def test_a_verified_checkpoint_found_on_disk_completes_the_run_and_is_recorded(tmp_path: Path) -> None:
    """Its report was lost with the worker: the controller's own look counts (where it can look)."""
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=50)
    world.tick()
    world.commit_on_disk(run_id, 50)
    world.report(run_id, 1, {"type": "finished", "step": 50})
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    assert world.run(run_id).state == RunState.COMPLETED
    with world.factory() as s:
        [row] = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).all()
        assert row.step == 50 and row.path == str(world.step_dir(run_id, 50)) and row.attempt == 1
    assert any(e.kind == "checkpoint_found" for e in world.events(run_id))


def test_failures_without_progress_fail_the_run_with_the_last_error_and_backoff(world: World) -> None:
    run_id = world.create()
    world.tick()
    world.sched.set("job-1", J.FAILED, exit_code=1)
    world.report(run_id, 1, {"type": "failed", "step": 0, "error": "Traceback\nValueError: bad shard"})
    world.tick()
    assert world.attempts(run_id)[0].end_reason == "failed"
    assert world.attempts(run_id)[0].error == "ValueError: bad shard"
    assert len(world.sched.submitted) == 1  # backoff: 10 s
    world.clock.advance(9)
    world.tick()
    assert len(world.sched.submitted) == 1
    world.clock.advance(2)
    world.tick()
    assert len(world.sched.submitted) == 2
    world.sched.set("job-2", J.FAILED, exit_code=137)
    world.tick()
    run = world.run(run_id)
    assert run.state == RunState.FAILED
    assert "2 attempts in a row committed no new checkpoint" in (run.last_error or "")
    assert "exit code 137" in (run.last_error or "")


def test_timeout_is_counted_and_the_run_continues(world: World) -> None:
    run_id = world.create()
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.checkpoint(run_id, 1, 30)
    world.sched.set("job-1", J.TIMEOUT, exit_code=0, reason="killed at the time limit")
    world.tick()
    a1, a2 = world.attempts(run_id)
    assert a1.end_reason == "timeout_killed" and a2.state == AttemptState.PENDING
    assert any("missed" in (e.kind or "") or "time limit" in (e.message or "") for e in world.events(run_id))


def test_scheduler_refusal_ends_the_attempt_failed_with_its_message(world: World) -> None:
    world.sched.refuse = "sbatch: error: invalid partition specified: gpu"
    run_id = world.create(max_failures_without_progress=1)
    world.tick()
    [a1] = world.attempts(run_id)
    assert a1.state == AttemptState.ENDED and a1.end_reason == "failed"
    assert "invalid partition" in (a1.error or "")
    run = world.run(run_id)
    assert run.state == RunState.FAILED and "invalid partition" in (run.last_error or "")


def test_interrupted_submission_is_adopted_not_duplicated(world: World) -> None:
    run_id = world.create()
    # The controller died after recording the intent and after sbatch, before recording the id.
    with world.factory() as s:
        s.add(
            Attempt(
                run_id=run_id,
                number=1,
                backend="local",
                job_name=f"pyrecover-r{run_id}-a1",
                state=AttemptState.SUBMITTING,
                step_at_start=0,
            )
        )
        s.commit()
    world.sched.by_name[f"pyrecover-r{run_id}-a1"] = "job-77"
    world.sched.set("job-77", J.RUNNING)
    world.tick()
    [a1] = world.attempts(run_id)
    assert a1.external_id == "job-77" and a1.state in (AttemptState.PENDING, AttemptState.RUNNING)
    assert world.sched.submitted == []


def test_interrupted_submission_never_sent_is_submitted_once(world: World) -> None:
    run_id = world.create()
    with world.factory() as s:
        s.add(
            Attempt(
                run_id=run_id,
                number=1,
                backend="local",
                job_name=f"pyrecover-r{run_id}-a1",
                state=AttemptState.SUBMITTING,
                step_at_start=0,
            )
        )
        s.commit()
    world.tick()
    world.tick()
    assert [a.external_id for a in world.attempts(run_id)] == ["job-1"]
    assert len(world.sched.submitted) == 1


def test_cancel(world: World) -> None:
    run_id = world.create()
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.cancel(run_id)
    world.tick()
    assert world.sched.cancelled == ["job-1"]
    world.tick()
    assert world.attempts(run_id)[0].end_reason == "cancelled"
    assert world.run(run_id).state == RunState.CANCELLED
    assert len(world.sched.submitted) == 1


def test_prequeued_successor_with_dependency_and_cancelled_when_finished(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(name="slurm", supports_dependencies=True))
    run_id = world.create(steps=100)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.checkpoint(run_id, 1, 60)
    world.report(run_id, 1, {"type": "stopping", "step": 60, "reason": "deadline"})
    world.tick()
    assert [s.dependency for s in world.sched.submitted] == [None, "job-1"]
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    a1, a2 = world.attempts(run_id)
    assert a1.end_reason == "deadline_stop" and a2.state == AttemptState.PENDING  # the successor stays
    assert len(world.sched.submitted) == 2
    # Attempt 2 runs to the end, stops with steps done: nothing more is queued; a pre-queued 3 is cancelled.
    world.sched.set("job-2", J.RUNNING)
    world.tick()
    world.report(run_id, 2, {"type": "stopping", "step": 100, "reason": "deadline"})
    world.tick()
    assert len(world.sched.submitted) == 3
    world.checkpoint(run_id, 2, 100)
    world.sched.set("job-2", J.COMPLETED, exit_code=0)
    world.tick()
    assert world.run(run_id).state == RunState.COMPLETED
    assert world.sched.cancelled == ["job-3"]
    assert world.attempts(run_id)[2].end_reason == "cancelled"


def test_resumed_run_gets_its_failure_budget_afresh(world: World) -> None:
    from controller.services import resume_run

    run_id = world.create(backoff_seconds=0)
    for job in ("job-1", "job-2"):
        world.tick()
        world.sched.set(job, J.FAILED, exit_code=1)
    world.tick()
    assert world.run(run_id).state == RunState.FAILED
    with world.factory() as s:
        resume_run(s, run_id, by="tester")
        s.commit()
    world.tick()
    world.sched.set("job-3", J.FAILED, exit_code=1)
    world.tick()
    assert world.run(run_id).state != RunState.FAILED  # one stalled attempt of a budget of 2
    assert [a.number for a in world.attempts(run_id)] == [1, 2, 3, 4]


def test_a_conflicting_intent_is_refused_by_the_database_not_raised(world: World) -> None:
    from controller.reconciler.ending import TickContext
    from controller.reconciler.submission import _record_intent

    run_id = world.create()
    world.tick()
    ctx = TickContext(
        settings=world.settings,
        session_factory=world.factory,
        scheduler=world.rec.scheduler,
        now=world.clock,
        wake=lambda: None,
    )
    # Attempt 1 is live: a second intent conflicts with the one-live-attempt index (at the flush).
    assert _record_intent(ctx, run_id, dependency=None) is None
    assert [a.number for a in world.attempts(run_id)] == [1]
    # A stale "due" list (another controller's, or from earlier in the pass) is re-checked too.
    assert _record_intent(ctx, run_id, dependency=None, only_if_due=True) is None


def test_a_run_cancelled_after_the_due_list_was_read_is_not_submitted(world: World) -> None:
    from controller.reconciler import store

    run_id = world.create()
    with world.factory() as s:
        assert [r.id for r in store.runs_due(s, world.clock.now)] == [run_id]
        assert store.is_due(s, run_id, world.clock.now)
    world.cancel(run_id)
    with world.factory() as s:
        assert not store.is_due(s, run_id, world.clock.now)


def test_prequeue_follows_the_declared_capability_not_the_backend_name(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(name="slurm", supports_dependencies=False))
    run_id = world.create(steps=100)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.report(run_id, 1, {"type": "stopping", "step": 60, "reason": "deadline"})
    world.tick()
    assert world.attempts(run_id)[0].state == AttemptState.STOPPING
    assert [s.dependency for s in world.sched.submitted] == [None]  # nothing queued behind job-1


def test_prequeued_successor_counts_progress_from_the_final_checkpoint(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(name="slurm", supports_dependencies=True))
    run_id = world.create(steps=100, max_failures_without_progress=1)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    world.checkpoint(run_id, 1, 40)
    world.report(run_id, 1, {"type": "stopping", "step": 40, "reason": "deadline"})
    world.tick()  # attempt 2 is pre-queued while attempt 1 still saves its final checkpoint
    assert world.attempts(run_id)[1].step_at_start == 40
    world.checkpoint(run_id, 1, 55)
    world.sched.set("job-1", J.COMPLETED, exit_code=0)
    world.tick()
    assert world.attempts(run_id)[1].step_at_start == 55  # where it will resume
    # It then crashes without committing anything: no progress, so a budget of 1 is used up.
    world.sched.set("job-2", J.FAILED, exit_code=1)
    world.tick()
    assert world.run(run_id).state == RunState.FAILED


def test_a_stored_run_the_rules_refuse_never_starts(world: World) -> None:
    """A row written around the API (or before a rule existed) with a variable that loads code."""
    run_id = world.create()
    with world.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        spec = dict(run.spec)
        spec["resources"] = {**spec["resources"], "env": {"PYTHONPATH": "/tmp/evil"}}
        run.spec = spec
        s.commit()
    world.tick()
    assert world.sched.submitted == [] and world.attempts(run_id) == []
    run = world.run(run_id)
    assert run.state == RunState.FAILED and "resources.env" in (run.last_error or "")
    assert "PYTHONPATH" in (run.last_error or "")


def test_a_stored_run_outside_todays_roots_fails_its_attempts_and_starts_no_job(world: World) -> None:
    """Valid by the model, refused by the admin's rules (here: a dataset root the admin removed)."""
    run_id = world.create()
    with world.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        spec = dict(run.spec)
        spec["training"] = {**spec["training"], "dataset": "/etc/shadow"}
        run.spec = spec
        s.commit()
    for _ in range(4):
        world.tick()
        world.clock.advance(60)
    assert world.sched.submitted == [], "no job reaches the scheduler"
    attempts = world.attempts(run_id)
    assert attempts and all("training.dataset" in (a.error or "") for a in attempts)
    assert world.run(run_id).state == RunState.FAILED
