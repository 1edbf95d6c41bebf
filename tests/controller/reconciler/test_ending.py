"""Ending an attempt through the reconciler: failure classes, divergence policies, the argv that follows.

The scheduler is a fake at the process boundary; the database, the store and the rules are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler
from test_reconciler import World

from shared.exit_codes import ExitCode
from shared.states import EndReason, RunState
from shared.states import SchedulerJobState as J


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, FakeScheduler())


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize(
    ("code", "reason", "hint"),
    [
        (ExitCode.CONFIG_ERROR, EndReason.CONFIG_ERROR, "fix the field the error names"),
        (ExitCode.USAGE, EndReason.CONFIG_ERROR, "fix the field the error names"),
        (ExitCode.CHECKPOINT_ERROR, EndReason.INTEGRITY_ERROR, "restore a good one"),
        (ExitCode.FRESH_START_REFUSED, EndReason.RESTART_REFUSED, "allow_restart_from_scratch"),
    ],
)
def test_a_config_or_integrity_error_fails_the_run_after_one_attempt(
    world: World, code: int, reason: EndReason, hint: str
) -> None:
    run_id = world.create(max_failures_without_progress=3)
    world.tick()
    world.report(run_id, 1, {"type": "failed", "step": 0, "error": "dataset: /data/x.parquet: no such file"})
    world.sched.set("job-1", J.FAILED, exit_code=code)
    world.tick()
    world.clock.advance(3600)
    world.tick()
    run = world.run(run_id)
    assert run.state == RunState.FAILED and len(world.sched.submitted) == 1
    [attempt] = world.attempts(run_id)
    assert attempt.end_reason == reason and attempt.exit_code == code
    assert "dataset: /data/x.parquet: no such file" in (run.last_error or "")
    assert hint in (run.last_error or "") and "Not retried" in (run.last_error or "")


def test_an_ordinary_crash_is_still_retried(world: World) -> None:
    run_id = world.create()
    world.tick()
    world.sched.set("job-1", J.FAILED, exit_code=ExitCode.FAILURE)
    world.tick()
    world.clock.advance(11)
    world.tick()
    assert world.attempts(run_id)[0].end_reason == EndReason.FAILED
    assert len(world.sched.submitted) == 2


def diverged(
    world: World, run_id: int, attempt: int, *, committed: int | None, chunks: int
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "diverged",
        "seq": 500 + attempt,
        "step": 57,
        "reason": "non_finite",
        "message": "10 updates in a row had a non-finite loss (nan)",
        "skipped_steps": 10,
        "committed_step": committed,
        "committed_cursor": {"chunks_consumed": 400} if committed is not None else None,
        "cursor": {"chunks_consumed": chunks},
    }
    world.report(
        run_id,
        attempt,
        event,
        {"type": "failed", "seq": 600 + attempt, "step": 57, "error": event["message"]},
    )
    return event


def test_on_divergence_fail_fails_the_run_with_the_message(world: World) -> None:
    run_id = world.create()
    world.tick()
    world.checkpoint(run_id, 1, 50)
    diverged(world, run_id, 1, committed=50, chunks=464)
    world.sched.set("job-1", J.FAILED, exit_code=ExitCode.DIVERGED)
    world.tick()
    run = world.run(run_id)
    assert run.state == RunState.FAILED
    assert world.attempts(run_id)[0].end_reason == EndReason.DIVERGED
    assert (run.last_error or "").startswith("attempt 1 diverged: 10 updates in a row had a non-finite loss")


def test_on_divergence_rollback_resumes_from_the_commit_and_skips_the_window(world: World) -> None:
    run_id = world.create(on_divergence="rollback", max_rollbacks=1)
    world.tick()
    assert flag(world.sched.submitted[0].argv, "--resume-from-checkpoint") == "latest"
    assert "--data-skip-to" not in world.sched.submitted[0].argv
    world.checkpoint(run_id, 1, 50)
    diverged(world, run_id, 1, committed=50, chunks=464)
    # srun killed the other ranks: the job's code is not 6, the worker's event decides
    world.sched.set("job-1", J.FAILED, exit_code=137)
    world.tick()
    assert world.run(run_id).state == RunState.QUEUED
    [event] = [e for e in world.events(run_id) if e.kind == "rollback"]
    assert event.data == {"attempt": 1, "from_step": 50, "skip_from": 400, "skip_to": 464}
    assert "skips the data window from sample 400 to sample 464" in event.message
    world.clock.advance(3600)
    world.tick()
    argv = world.sched.submitted[1].argv
    assert flag(argv, "--resume-from-checkpoint") == "step-50" and flag(argv, "--data-skip-to") == "464"
    # the rollback attempt crashed before committing past the window: the next one skips it too
    world.sched.set("job-2", J.FAILED, exit_code=1)
    world.tick()
    world.clock.advance(3600)
    world.tick()
    argv = world.sched.submitted[2].argv
    assert flag(argv, "--resume-from-checkpoint") == "step-50" and flag(argv, "--data-skip-to") == "464"
    # once it committed past the divergence, attempts resume from the latest checkpoint again
    world.checkpoint(run_id, 3, 80)
    world.sched.set("job-3", J.COMPLETED, exit_code=0)
    world.tick()
    world.tick()
    argv = world.sched.submitted[3].argv
    assert flag(argv, "--resume-from-checkpoint") == "latest" and "--data-skip-to" not in argv
    # a second divergence is over max_rollbacks=1
    world.checkpoint(run_id, 4, 90)
    diverged(world, run_id, 4, committed=90, chunks=700)
    world.sched.set("job-4", J.FAILED, exit_code=ExitCode.DIVERGED)
    world.tick()
    run = world.run(run_id)
    assert run.state == RunState.FAILED and "max_rollbacks=1" in (run.last_error or "")


def test_allow_restart_from_scratch_reaches_the_worker_only_when_the_policy_says_so(world: World) -> None:
    plain = world.create()
    world.tick()
    assert "--allow-restart-from-scratch" not in world.sched.submitted[0].argv
    world.clock.advance(1)
    allowed = world.create(allow_restart_from_scratch=True)
    world.tick()
    [spec] = [s for s in world.sched.submitted if s.run_id == allowed]
    assert "--allow-restart-from-scratch" in spec.argv
    assert plain != allowed
