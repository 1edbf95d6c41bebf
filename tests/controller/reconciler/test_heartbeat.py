"""The controller's heartbeat timeout: a silent RUNNING attempt is cancelled and ends ``hung``.

Reports go through the real ingest service (what the report endpoint calls); only the scheduler
and the clock are fakes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler
from test_reconciler import World

from controller.db.types import to_datetime
from controller.reconciler.decide import HEARTBEAT_FLOOR_S
from controller.services.reports import ingest
from shared.schemas import ReportBatch
from shared.states import EndReason, RunState
from shared.states import SchedulerJobState as J


def send(world: World, run_id: int, attempt: int, *events: dict[str, Any]) -> None:
    """A report batch as the endpoint ingests it, received at the fake clock's time."""
    batch = ReportBatch.model_validate(
        {"attempt": attempt, "events": [{"time": world.clock.now, **e} for e in events]}
    )
    with world.factory() as s:
        ingest(s, run_id, batch, now=to_datetime(world.clock.now))
        s.commit()


_seq = iter(range(1, 10_000))


def progress(step: int, step_time: float) -> dict[str, Any]:
    return {
        "type": "progress",
        "seq": next(_seq),
        "step": step,
        "loss": 2.0,
        "lr": 1e-3,
        "tokens_seen": step,
        "step_time": step_time,
    }


def running(world: World, **policy: Any) -> int:
    run_id = world.create(**policy)
    world.tick()
    world.sched.set("job-1", J.RUNNING)
    world.tick()
    send(world, run_id, 1, {"type": "started", "seq": next(_seq), "step": 0, "world_size": 1})
    return run_id


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, FakeScheduler())


def test_a_silent_running_attempt_is_cancelled_and_ends_hung_then_is_retried(world: World) -> None:
    run_id = running(world)
    send(world, run_id, 1, progress(5, 1.0))
    world.clock.advance(HEARTBEAT_FLOOR_S - 1)
    world.tick()
    assert world.sched.cancelled == []  # still within the floor
    world.clock.advance(2)
    world.tick()
    assert world.sched.cancelled == ["job-1"]
    [event] = [e for e in world.events(run_id) if e.kind == "heartbeat_timeout"]
    assert "sent no report for 301 s (heartbeat timeout 300 s)" in event.message
    # the fake scheduler now says CANCELLED: the attempt ends hung, with the reason as its error
    world.tick()
    [a1, *rest] = world.attempts(run_id)
    assert a1.end_reason == EndReason.HUNG and "heartbeat timeout" in (a1.error or "")
    assert world.run(run_id).state == RunState.QUEUED and world.sched.cancelled == ["job-1"]
    assert rest == []  # a hang backs off like a crash (10 s) ...
    world.clock.advance(11)
    world.tick()
    assert len(world.sched.submitted) == 2  # ... then it is retried


def test_reports_keep_an_attempt_alive(world: World) -> None:
    run_id = running(world)
    for step in range(5, 100, 5):
        world.clock.advance(HEARTBEAT_FLOOR_S * 0.9)
        send(world, run_id, 1, progress(step, 1.0))
        world.tick()
    assert world.sched.cancelled == []


def test_slow_steps_and_long_saves_stretch_the_timeout(world: World) -> None:
    run_id = running(world)
    # 5 steps between reports at 20 s each: a report every 100 s, timeout 10 × 100 s
    send(world, run_id, 1, progress(5, 20.0))
    world.clock.advance(999)
    world.tick()
    assert world.sched.cancelled == []
    # a save that took 10 × the report interval widens it by twice that
    send(
        world,
        run_id,
        1,
        {
            "type": "checkpoint_committed",
            "seq": next(_seq),
            "step": 10,
            "path": str(world.step_dir(run_id, 10)),
            "format": "dcp",
            "size_bytes": 1,
            "save_seconds": 1000.0,
        },
    )
    world.clock.advance(2999)
    world.tick()
    assert world.sched.cancelled == []
    world.clock.advance(2)
    world.tick()
    assert world.sched.cancelled == ["job-1"]


def test_the_policy_sets_the_timeout(world: World) -> None:
    run_id = running(world, heartbeat_timeout_seconds=60)
    send(world, run_id, 1, progress(5, 100.0))  # derived, this would be 5000 s
    world.clock.advance(61)
    world.tick()
    assert world.sched.cancelled == ["job-1"]


def test_a_failed_cancel_is_tried_again_and_an_attempt_is_cancelled_once(world: World) -> None:
    run_id = running(world, heartbeat_timeout_seconds=60)
    calls: list[str] = []

    def refuse(job_id: str) -> None:
        from controller.scheduler.base import SchedulerError

        calls.append(job_id)
        raise SchedulerError("scancel: slurmctld not responding")

    world.sched.cancel = refuse  # type: ignore[method-assign]
    world.clock.advance(61)
    world.tick()
    assert calls == ["job-1"] and not any(e.kind == "heartbeat_timeout" for e in world.events(run_id))
    del world.sched.cancel  # the real fake again
    original = world.sched.cancel

    def slow_cancel(job_id: str) -> None:
        world.sched.cancelled.append(job_id)  # scancel accepted; the job takes a while to go

    world.sched.cancel = slow_cancel  # type: ignore[method-assign]
    world.tick()
    world.tick()
    world.tick()
    assert world.sched.cancelled == ["job-1"]  # once, not every pass
    assert [a.state for a in world.attempts(run_id)] == ["RUNNING"]
    world.sched.cancel = original  # type: ignore[method-assign]
    world.sched.set("job-1", J.CANCELLED)
    world.tick()
    assert world.attempts(run_id)[0].end_reason == EndReason.HUNG


def test_a_loss_csv_written_on_a_visible_file_system_keeps_an_attempt_alive(tmp_path: Path) -> None:
    """Reports lost (a partition, a controller outage) while the worker trains: where the controller
    sees the checkpoint file system, the rows rank 0 appends are a sign of life too."""
    import os

    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = running(world, heartbeat_timeout_seconds=60)
    loss_csv = world.step_dir(run_id, 1).parent / "loss.csv"
    loss_csv.parent.mkdir(parents=True)
    loss_csv.write_text("step,loss\n1,2.0\n")
    for _ in range(5):
        world.clock.advance(50)
        os.utime(loss_csv, (world.clock.now, world.clock.now))
        world.tick()
    assert world.sched.cancelled == []
    world.clock.advance(61)  # the rows stop too: now it is hung
    world.tick()
    assert world.sched.cancelled == ["job-1"]


def test_commits_into_the_checkpoint_directory_keep_an_attempt_alive(tmp_path: Path) -> None:
    """The same without loss.csv (``log_loss_to_csv: false``): each commit renames a step directory
    into the run's checkpoint directory, which changes the directory itself."""
    import os

    world = World(tmp_path, FakeScheduler(), verify=True)
    run_id = running(world, heartbeat_timeout_seconds=60)
    for n in range(1, 6):
        world.clock.advance(50)
        world.commit_on_disk(run_id, 10 * n)
        os.utime(world.step_dir(run_id, 1).parent, (world.clock.now, world.clock.now))
        world.tick()
    assert world.sched.cancelled == []
    world.clock.advance(61)
    world.tick()
    assert world.sched.cancelled == ["job-1"]
