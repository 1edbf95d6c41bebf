"""Progress from the checkpoints on disk when the reports were lost (``controller.reconciler.ondisk``).

A real database and real checkpoint directories (a data file and its manifest, as the worker writes
them); the scheduler is a fake at the process boundary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakes import FakeScheduler
from sqlalchemy import select
from test_reconciler import World

from controller.db.models import Checkpoint
from controller.reconciler import ondisk
from shared.states import EndReason, RunState
from shared.states import SchedulerJobState as J


def seen(world: World, run_id: int) -> list[tuple[int, int | None, bool]]:
    with world.factory() as s:
        rows = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step))
        return [(r.step, r.attempt, bool(r.final)) for r in rows]


def test_attempts_that_committed_without_reporting_keep_their_progress(tmp_path: Path) -> None:
    """Three job ends with no report at all (workers cut off from the controller): judged by the
    reports alone the failure budget (2) would fail the run; judged by the disk it completes."""
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=30)
    for number, step in ((1, 10), (2, 20)):
        world.tick()
        world.commit_on_disk(run_id, step)
        world.sched.set(f"job-{number}", J.TIMEOUT)
        world.tick()
        attempt = world.attempts(run_id)[number - 1]
        assert attempt.end_reason == EndReason.TIMEOUT_KILLED
        assert (attempt.step_at_start, attempt.step_at_end) == (step - 10, step)
        assert world.run(run_id).state == RunState.QUEUED
    world.tick()
    assert world.attempts(run_id)[2].step_at_start == 20, "the next attempt resumes where the disk says"
    world.commit_on_disk(run_id, 30)
    world.sched.set("job-3", J.COMPLETED, exit_code=0)
    world.tick()
    assert world.run(run_id).state == RunState.COMPLETED
    assert seen(world, run_id) == [(10, 1, False), (20, 2, False), (30, 3, True)]
    found = [e for e in world.events(run_id) if e.kind == ondisk.FOUND_EVENT]
    assert len(found) == 3 and "attempt 1 never reported" in found[0].message


def test_without_sight_of_the_files_the_budget_judges_from_reports(tmp_path: Path) -> None:
    """The contrast: where the controller does not see the file system, the same ends count as no
    progress (nothing to go on) and the budget fails the run."""
    world = World(tmp_path, FakeScheduler(), verify=False)
    run_id = world.create(steps=30)
    for number, step in ((1, 10), (2, 20)):
        world.tick()
        world.commit_on_disk(run_id, step)
        world.sched.set(f"job-{number}", J.TIMEOUT)
        world.tick()
    assert world.run(run_id).state == RunState.FAILED
    assert seen(world, run_id) == []


def test_a_damaged_newest_falls_back_to_the_next_verified_one(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=100)
    world.tick()
    world.commit_on_disk(run_id, 10)
    world.commit_on_disk(run_id, 20)
    world.commit_on_disk(run_id, 30, corrupt=True)
    world.sched.set("job-1", J.TIMEOUT)
    world.tick()
    assert seen(world, run_id) == [(20, 1, False)], "only the newest that verifies is recorded"
    assert world.attempts(run_id)[0].step_at_end == 20


def test_only_steps_above_what_is_held_and_within_the_run_count(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=50)
    world.tick()
    world.checkpoint(run_id, 1, 40)  # reported
    world.commit_on_disk(run_id, 30)  # older than what is held: says nothing new
    world.commit_on_disk(run_id, 60)  # past the run's last step: not this run's progress
    world.sched.set("job-1", J.TIMEOUT)
    world.tick()
    assert seen(world, run_id) == [(40, 1, False)]
    assert not [e for e in world.events(run_id) if e.kind == ondisk.FOUND_EVENT]


def test_candidates_ignore_temporaries_quarantine_and_files(tmp_path: Path) -> None:
    for name in ("step-5", "step-12", "step-7", ".tmp-step-20-ab12", "quarantine-step-15-corrupt-1"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-30").write_text("a file, not a checkpoint")
    (tmp_path / "step-١٢").mkdir()  # not ASCII digits: no step
    assert ondisk.candidates(tmp_path, 5, 100) == [12, 7]
    assert ondisk.candidates(tmp_path / "missing", 0, 100) == []


def test_a_manifest_naming_a_device_is_never_read(tmp_path: Path) -> None:
    """A step directory whose data file is a link to /dev/zero (its size 0 as the manifest says):
    hashing it would never end and stall every run's reconciling; it fails verification at once."""
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=50)
    world.tick()
    directory = world.commit_on_disk(run_id, 10)
    (directory / "checkpoint.pt").unlink()
    os.symlink("/dev/zero", directory / "checkpoint.pt")
    manifest = (directory / "manifest.json").read_text()
    (directory / "manifest.json").write_text(manifest.replace('"size": 700', '"size": 0'))
    world.sched.set("job-1", J.TIMEOUT)
    world.tick()  # returns: the device is not read
    assert seen(world, run_id) == []


def _claim(directory: Path, **attempt: object) -> None:
    """The ``attempt`` block the worker writes into the manifest (its lost ``started`` report's time
    and the commit's)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps(manifest | {"attempt": attempt}))


def test_the_manifest_gives_the_ledger_the_times_the_lost_reports_had(tmp_path: Path) -> None:
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=100)
    world.tick()
    world.sched.set("job-1", J.RUNNING)  # started at the fake clock's now
    world.tick()
    t0 = world.clock.now
    _claim(world.commit_on_disk(run_id, 10), number="1", training_started_at=t0 + 5, committed_at=t0 + 40)
    world.clock.advance(50)
    world.sched.set("job-1", J.TIMEOUT)
    world.tick()
    [a1, *_] = world.attempts(run_id)
    assert a1.training_started_at is not None and a1.training_started_at.timestamp() == t0 + 5
    assert a1.last_commit_at is not None and a1.last_commit_at.timestamp() == t0 + 40


@pytest.mark.parametrize(
    "claim",
    [
        {"number": "2", "training_started_at": 5.0, "committed_at": 40.0},  # another attempt's
        {"number": "1", "training_started_at": -100.0, "committed_at": 10_000.0},  # outside its life
        {"number": "1", "training_started_at": "soon", "committed_at": float("nan")},
        {"number": "1", "training_started_at": True, "committed_at": None},
    ],
)
def test_times_the_manifest_cannot_vouch_for_are_ignored(tmp_path: Path, claim: dict[str, object]) -> None:
    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = world.create(steps=100)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    t0 = world.clock.now
    shifted = {k: v + t0 if isinstance(v, float) and v == v else v for k, v in claim.items()}
    directory = world.commit_on_disk(run_id, 10)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps(manifest | {"attempt": shifted}, allow_nan=True))
    world.clock.advance(50)
    world.sched.set("job-1", J.TIMEOUT)
    world.tick()
    a1 = world.attempts(run_id)[0]
    assert a1.step_at_end == 10, "the checkpoint still counts"
    assert a1.training_started_at is None and a1.last_commit_at is None
