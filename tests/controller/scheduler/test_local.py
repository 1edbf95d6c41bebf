"""The local backend with a fake worker (a few lines of Python), real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from controller.scheduler.local import LocalScheduler
from shared.schemas import ResourcesSpec
from shared.states import SchedulerJobState

FAKE_WORKER = r"""
import json, os, signal, sys, time
mode, arg = sys.argv[1], float(sys.argv[2])
out = os.environ.get("FAKE_OUT")
if out:
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYRECOVER_DEADLINE",
            "PYRECOVER_RUN_ID", "PYRECOVER_TOKEN", "PYRECOVER_SIGNAL_LEAD"]
    with open(f"{out}.{os.environ['RANK']}", "w") as f:
        json.dump({k: os.environ.get(k) for k in keys} | {"pgid": os.getpgid(0), "sid": os.getsid(0)}, f)
if mode == "exit":
    sys.exit(int(arg))
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "graceful":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
if mode == "usr1":
    def on_usr1(*a):
        print("got-usr1", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, on_usr1)
print("started", flush=True)
time.sleep(arg)
"""


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return path


def make_spec(
    tmp_path: Path,
    script: Path,
    *args: str,
    time_limit: str = "30s",
    ranks: int = 1,
    attempt: int = 1,
    env: dict[str, str] | None = None,
    lead: int = 0,
) -> JobSpec:
    return JobSpec(
        run_id=7,
        run_name="demo",
        attempt=attempt,
        job_name=f"pyrecover-r7-a{attempt}",
        argv=[sys.executable, str(script), *args],
        env={"PYRECOVER_RUN_ID": "7", **(env or {})},
        resources=ResourcesSpec(
            scheduler="local", time_limit=time_limit, ntasks_per_node=ranks, signal_lead_seconds=lead
        ),
        workdir=tmp_path,
        stdout=tmp_path / "logs" / f"attempt-{attempt}.out",
        stderr=tmp_path / "logs" / f"attempt-{attempt}.err",
    )


def wait_done(sched: LocalScheduler, job_id: str, limit: float = 30.0) -> JobStatus:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        status = sched.poll([job_id])[job_id]
        if status.state.finished:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish within {limit} s")


@pytest.fixture
def sched(tmp_path: Path) -> LocalScheduler:
    s = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0)
    yield s
    s.shutdown(kill=True)


def test_completed_with_env_per_rank(
    sched: LocalScheduler, tmp_path: Path, worker_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRECOVER_TOKEN", "user-secret")  # must not leak into the worker
    spec = make_spec(tmp_path, worker_script, "exit", "0", ranks=2, env={"FAKE_OUT": str(tmp_path / "env")})
    job_id = sched.submit(spec)
    assert job_id.startswith("local-")
    status = wait_done(sched, job_id)
    assert status.state is SchedulerJobState.COMPLETED and status.exit_code == 0
    seen = [json.loads((tmp_path / f"env.{r}").read_text()) for r in range(2)]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"] and seen[0]["MASTER_ADDR"] == "127.0.0.1"
    assert os.getpgid(0) not in (seen[0]["pgid"], seen[1]["pgid"])  # own sessions, not ours
    assert seen[0]["PYRECOVER_RUN_ID"] == "7" and seen[0]["PYRECOVER_TOKEN"] is None
    assert abs(float(seen[0]["PYRECOVER_DEADLINE"]) - (status.start_time or 0) - 30) < 0.01
    assert seen[0]["PYRECOVER_SIGNAL_LEAD"] == "0"  # this backend sends no warning signal


def test_nonzero_exit_is_failed_with_code(sched: LocalScheduler, tmp_path: Path, worker_script: Path) -> None:
    status = wait_done(sched, sched.submit(make_spec(tmp_path, worker_script, "exit", "3")))
    assert status.state is SchedulerJobState.FAILED and status.exit_code == 3


def test_stdout_goes_to_attempt_log(sched: LocalScheduler, tmp_path: Path, worker_script: Path) -> None:
    spec = make_spec(tmp_path, worker_script, "sleep", "0")
    wait_done(sched, sched.submit(spec))
    assert "started" in spec.stdout.read_text()


def test_walltime_sigterm_graceful_exit_is_still_timeout(
    sched: LocalScheduler, tmp_path: Path, worker_script: Path
) -> None:
    status = wait_done(
        sched, sched.submit(make_spec(tmp_path, worker_script, "graceful", "60", time_limit="1s"))
    )
    assert status.state is SchedulerJobState.TIMEOUT and status.exit_code == 0


def test_walltime_ignored_sigterm_gets_sigkill(
    sched: LocalScheduler, tmp_path: Path, worker_script: Path
) -> None:
    status = wait_done(
        sched, sched.submit(make_spec(tmp_path, worker_script, "ignore-term", "60", time_limit="1s"))
    )
    assert status.state is SchedulerJobState.TIMEOUT
    assert status.exit_code == 128 + signal.SIGKILL


def test_signal_lead_sends_usr1_before_deadline(tmp_path: Path, worker_script: Path) -> None:
    sched = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0, signal_lead_s=None)  # lead from the spec
    # The spec says what the run asked for; the worker must hear the lead this backend really uses.
    env = {"FAKE_OUT": str(tmp_path / "env"), "PYRECOVER_SIGNAL_LEAD": "30"}
    spec = make_spec(tmp_path, worker_script, "usr1", "60", time_limit="3s", lead=2, env=env)
    status = wait_done(sched, sched.submit(spec))
    assert status.state is SchedulerJobState.COMPLETED  # stopped on USR1, before the deadline
    assert "got-usr1" in spec.stdout.read_text()
    assert json.loads((tmp_path / "env.0").read_text())["PYRECOVER_SIGNAL_LEAD"] == "2"


def test_cancel(sched: LocalScheduler, tmp_path: Path, worker_script: Path) -> None:
    job_id = sched.submit(make_spec(tmp_path, worker_script, "ignore-term", "60"))
    assert sched.poll([job_id])[job_id].state is SchedulerJobState.RUNNING
    sched.cancel(job_id)
    assert wait_done(sched, job_id).state is SchedulerJobState.CANCELLED
    sched.cancel(job_id)  # idempotent


def test_dependency_is_refused(sched: LocalScheduler, tmp_path: Path, worker_script: Path) -> None:
    spec = make_spec(tmp_path, worker_script, "exit", "0")
    with pytest.raises(SchedulerError, match="dependencies"):
        sched.submit(JobSpec(**{**spec.__dict__, "dependency": "local-1-1"}))


def test_unknown_job_is_lost_and_find_by_name(
    sched: LocalScheduler, tmp_path: Path, worker_script: Path
) -> None:
    assert sched.poll(["local-1-999"])["local-1-999"].state is SchedulerJobState.LOST
    assert sched.find_by_name("pyrecover-r7-a2") is None
    job_id = sched.submit(make_spec(tmp_path, worker_script, "exit", "0", attempt=2))
    assert sched.find_by_name("pyrecover-r7-a2") == job_id
    wait_done(sched, job_id)


def test_restarted_controller_adopts_running_job_and_enforces_walltime(
    tmp_path: Path, worker_script: Path
) -> None:
    first = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0)
    job_id = first.submit(make_spec(tmp_path, worker_script, "ignore-term", "60", time_limit="2s"))
    # A second instance stands for the restarted controller: it never spawned this job.
    second = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0)
    assert second.find_by_name("pyrecover-r7-a1") == job_id
    assert second.poll([job_id])[job_id].state is SchedulerJobState.RUNNING
    status = wait_done(second, job_id)
    assert status.state is SchedulerJobState.TIMEOUT
    first.shutdown(kill=True)


def test_restarted_controller_reads_result_of_job_that_ended_meanwhile(
    tmp_path: Path, worker_script: Path
) -> None:
    first = LocalScheduler(tmp_path / "jobs")
    job_id = first.submit(make_spec(tmp_path, worker_script, "exit", "5"))
    wait_done(first, job_id)
    # Forget the result, as if the controller died before its supervisor wrote it.
    state_file = tmp_path / "jobs" / f"{job_id}.json"
    record = json.loads(state_file.read_text())
    record["result"] = None
    state_file.write_text(json.dumps(record))
    status = LocalScheduler(tmp_path / "jobs").poll([job_id])[job_id]
    assert status.state is SchedulerJobState.FAILED and status.exit_code == 5


def test_vanished_processes_without_exit_status_are_lost(tmp_path: Path, worker_script: Path) -> None:
    first = LocalScheduler(tmp_path / "jobs")
    job_id = first.submit(make_spec(tmp_path, worker_script, "exit", "0"))
    wait_done(first, job_id)
    state_file = tmp_path / "jobs" / f"{job_id}.json"
    record = json.loads(state_file.read_text())
    record["result"] = None
    state_file.write_text(json.dumps(record))
    (tmp_path / "jobs" / f"{job_id}.rank0.exit").unlink()
    assert LocalScheduler(tmp_path / "jobs").poll([job_id])[job_id].state is SchedulerJobState.LOST


def test_reused_pid_is_not_adopted(tmp_path: Path, worker_script: Path) -> None:
    first = LocalScheduler(tmp_path / "jobs")
    job_id = first.submit(make_spec(tmp_path, worker_script, "exit", "0"))
    wait_done(first, job_id)
    state_file = tmp_path / "jobs" / f"{job_id}.json"
    record = json.loads(state_file.read_text())
    # Our own (running) pid with a different start time stands for a pid the kernel reused.
    record |= {"result": None, "pids": [os.getpid()], "start_ticks": [1]}
    state_file.write_text(json.dumps(record))
    (tmp_path / "jobs" / f"{job_id}.rank0.exit").unlink()
    assert LocalScheduler(tmp_path / "jobs").poll([job_id])[job_id].state is SchedulerJobState.LOST


def test_ranks_spawned_but_never_recorded_are_adopted_not_lost(tmp_path: Path, worker_script: Path) -> None:
    """The controller died between spawning a rank and writing its pid: the restarted controller
    must find the rank (not report LOST and start a second worker of the run beside it)."""
    first = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0)
    job_id = first.submit(make_spec(tmp_path, worker_script, "ignore-term", "60", time_limit="3s", ranks=2))
    state_file = tmp_path / "jobs" / f"{job_id}.json"
    record = json.loads(state_file.read_text())
    spawned = list(record["pids"])
    assert len(spawned) == 2
    record |= {"pids": [], "start_ticks": []}  # the intent as saved before any process existed
    state_file.write_text(json.dumps(record))
    second = LocalScheduler(tmp_path / "jobs", kill_wait_s=1.0)
    try:
        assert second.poll([job_id])[job_id].state is SchedulerJobState.RUNNING
        assert sorted(json.loads(state_file.read_text())["pids"]) == sorted(spawned)
        # Adopted for real: the walltime is still enforced on both ranks (they ignore SIGTERM, so
        # only the adopting supervisor's SIGKILL ends them before their 60 s sleep).
        assert wait_done(second, job_id).state is SchedulerJobState.TIMEOUT
    finally:
        second.shutdown(kill=True)
        first.shutdown(kill=True)
