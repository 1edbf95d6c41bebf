"""The ``slurm`` backend against a real SLURM cluster (``deploy/slurm-local/up.sh``).

Skipped when ``sinfo`` is missing or no node is idle; ``PYRECOVER_STRICT_INTEGRATION=1`` (CI) turns
the skip into a failure. Waits are bounded polls, never timing assertions. Exactly one test waits
for a real time limit (~90 s: Slurm enforces ``--time=1`` late).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from controller.scheduler.slurm import SlurmScheduler
from controller.settings import Settings
from shared import envvars
from shared.env_policy import DEFAULT_ENV_ALLOW
from shared.schemas import ResourcesSpec
from shared.states import SchedulerJobState as S

pytestmark = [pytest.mark.integration, pytest.mark.slurm_wait]


def _cluster_ready() -> str | None:
    """None when a usable cluster answers, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM CLI (sinfo/sbatch) not installed: run deploy/slurm-local/up.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        said = out.stdout.strip() or out.stderr.strip()
        return f"no idle SLURM node (sinfo: {said!r}): run deploy/slurm-local/up.sh"
    return None


@pytest.fixture(scope="module")
def sched() -> SlurmScheduler:
    why = _cluster_ready()
    if why is not None:
        pytest.skip(why)
    # The variables these jobs carry are the admin's to allow (the renderer checks them again).
    return SlurmScheduler(Settings(env_allow=[*DEFAULT_ENV_ALLOW, "PYR_TEST_*"]), cli_timeout_s=30)


@pytest.fixture
def jobdir(tmp_path: Path) -> Path:
    # Jobs run as the same user on this machine, so the test's tmp dir is shared with them.
    return tmp_path


_attempts = iter(range(1, 10_000))


def spec_for(jobdir: Path, argv: list[str], *, env: dict[str, str] | None = None, **res: Any) -> JobSpec:
    attempt = next(_attempts)
    dependency = res.pop("dependency", None)
    own = {k: v for k, v in (env or {}).items() if k not in envvars.CONTROLLER_SET}
    resources = ResourcesSpec(scheduler="slurm", **{"time_limit": "5", "env": own, **res})
    return JobSpec(
        run_id=990,
        run_name="it-slurm",
        attempt=attempt,
        job_name=f"pyrecover-r990-a{attempt}",
        argv=argv,
        env={envvars.RUN_ID: "990", envvars.ATTEMPT: str(attempt), **(env or {})},
        resources=resources,
        workdir=jobdir,
        stdout=jobdir / "logs" / f"attempt-{attempt:04d}.out",
        stderr=jobdir / "logs" / f"attempt-{attempt:04d}.err",
        dependency=dependency,
    )


def wait_for(
    sched: SlurmScheduler,
    job_ids: list[str],
    done: Callable[[dict[str, JobStatus]], bool],
    limit: float = 120,
) -> dict[str, JobStatus]:
    """Poll (batched) until ``done``; fail with the last statuses after ``limit`` seconds."""
    end = time.monotonic() + limit
    while True:
        got = sched.poll(job_ids)
        if done(got):
            return got
        if time.monotonic() > end:
            pytest.fail(f"jobs {job_ids} did not reach the expected state within {limit} s: {got}")
        time.sleep(0.5)


def all_finished(got: dict[str, JobStatus]) -> bool:
    return all(s.state.finished for s in got.values())


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_job_writes_file_and_completes(sched: SlurmScheduler, jobdir: Path) -> None:
    job = sched.submit(spec_for(jobdir, ["/bin/sh", "-c", "echo done > marker.txt"]))
    st = wait_for(sched, [job], all_finished)[job]
    assert (st.state, st.exit_code) == (S.COMPLETED, 0)
    assert (jobdir / "marker.txt").read_text() == "done\n"
    assert st.start_time is not None and st.end_time is not None and st.end_time >= st.start_time


def test_batched_poll_of_several_jobs(sched: SlurmScheduler, jobdir: Path) -> None:
    ok = sched.submit(spec_for(jobdir, ["/bin/true"]))
    bad = sched.submit(spec_for(jobdir, ["/bin/sh", "-c", "exit 3"]))
    other = sched.submit(spec_for(jobdir, ["/bin/sh", "-c", "exit 0"]))
    got = wait_for(sched, [ok, bad, other, "99999999"], lambda g: all_finished(g))
    assert {k: (v.state, v.exit_code) for k, v in got.items()} == {
        ok: (S.COMPLETED, 0),
        bad: (S.FAILED, 3),
        other: (S.COMPLETED, 0),
        "99999999": (S.LOST, None),
    }


def test_unknown_partition_fails_with_sbatch_message(sched: SlurmScheduler, jobdir: Path) -> None:
    with pytest.raises(SchedulerError, match="invalid partition specified: no-such-partition"):
        sched.submit(spec_for(jobdir, ["/bin/true"], partition="no-such-partition"))


def test_vanished_job_is_lost(sched: SlurmScheduler) -> None:
    st = sched.poll(["99999998"])["99999998"]
    assert st.state is S.LOST


def test_cancel_running_job(sched: SlurmScheduler, jobdir: Path) -> None:
    spec = spec_for(jobdir, ["/bin/sh", "-c", "touch started; sleep 300"])
    job = sched.submit(spec)
    try:
        assert sched.find_by_name(spec.job_name) == job
        wait_for(sched, [job], lambda g: g[job].state is S.RUNNING and (jobdir / "started").exists())
    finally:
        sched.cancel(job)
    st = wait_for(sched, [job], all_finished)[job]
    assert st.state is S.CANCELLED
    sched.cancel(job)  # idempotent on an ended job


def test_env_values_and_rendezvous_arrive_literally(sched: SlurmScheduler, jobdir: Path) -> None:
    canary = jobdir / "canary"
    value = f"a b; touch {canary} $(touch {canary}) `touch {canary}` 'q' \"d\" $HOME"
    token = jobdir / "token"
    token.write_text("secret-token")
    token.chmod(0o600)
    env = {"PYR_TEST_VALUE": value, envvars.TOKEN_FILE: str(token)}
    code = (
        "import os, json; json.dump({k: os.environ.get(k) for k in "
        "['PYR_TEST_VALUE', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_JOB_ID', 'PYRECOVER_TOKEN_FILE']}, "
        "open('env.json', 'w'))"
    )
    job = sched.submit(spec_for(jobdir, py(code), env=env))
    st = wait_for(sched, [job], all_finished)[job]
    assert st.state is S.COMPLETED, [p.read_text() for p in jobdir.glob("logs/*.err")]
    seen = json.loads((jobdir / "env.json").read_text())
    assert seen["PYR_TEST_VALUE"] == value
    assert not canary.exists()
    assert seen["MASTER_ADDR"]
    assert int(seen["MASTER_PORT"]) == 20000 + int(seen["SLURM_JOB_ID"]) % 20000
    assert seen["PYRECOVER_TOKEN_FILE"] == str(token)
    script = next(jobdir.glob("logs/*.sbatch")).read_text()
    assert "secret-token" not in script


def test_two_tasks_get_distinct_ranks(sched: SlurmScheduler, jobdir: Path) -> None:
    job = sched.submit(
        spec_for(jobdir, ["/bin/sh", "-c", 'echo "$SLURM_NTASKS" > "rank-$SLURM_PROCID"'], ntasks_per_node=2)
    )
    st = wait_for(sched, [job], all_finished)[job]
    assert st.state is S.COMPLETED
    assert sorted(p.name for p in jobdir.glob("rank-*")) == ["rank-0", "rank-1"]
    assert (jobdir / "rank-1").read_text() == "2\n"


def test_dependency_afterany_waits_for_predecessor(sched: SlurmScheduler, jobdir: Path) -> None:
    release = jobdir / "release"
    first = sched.submit(
        spec_for(jobdir, ["/bin/sh", "-c", f"while [ ! -e {release} ]; do sleep 0.2; done; exit 1"])
    )
    second = sched.submit(spec_for(jobdir, ["/bin/sh", "-c", "echo ran > successor.txt"], dependency=first))
    try:
        got = wait_for(sched, [first, second], lambda g: g[first].state is S.RUNNING)
        assert got[second].state is S.PENDING
        assert got[second].reason == "Dependency"
        release.touch()
        # afterany: the successor runs even though the predecessor failed.
        got = wait_for(sched, [first, second], all_finished)
        assert (got[first].state, got[second].state) == (S.FAILED, S.COMPLETED)
        assert (jobdir / "successor.txt").exists()
        assert got[second].start_time is not None and got[first].end_time is not None
        assert got[second].start_time >= got[first].end_time
    finally:
        release.touch()  # never leave the predecessor waiting on a failed assertion


_SIGNAL_PROBE = """
import signal, time, pathlib
got = pathlib.Path('usr1.txt')
def on_usr1(sig, frame):
    got.write_text(str(time.time()))
def on_term(sig, frame):
    pathlib.Path('term.txt').write_text(str(time.time()))
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
pathlib.Path('started.txt').write_text(str(time.time()))
while True:  # a worker whose time-aware stop is disabled: only the scheduler can end it
    time.sleep(0.2)
"""


@pytest.mark.slow
def test_time_limit_gives_timeout_and_usr1_backstop_reaches_the_rank_first(
    sched: SlurmScheduler, jobdir: Path
) -> None:
    job = sched.submit(spec_for(jobdir, py(_SIGNAL_PROBE), time_limit="1", signal_lead_seconds=40))
    running = wait_for(sched, [job], lambda g: g[job].state is S.RUNNING)[job]
    assert running.deadline is not None and running.start_time is not None
    assert running.deadline - running.start_time == pytest.approx(60, abs=1), "--time=1 is a 60 s limit"
    st = wait_for(sched, [job], all_finished, limit=240)[job]
    assert st.state is S.TIMEOUT
    assert st.reason == "TimeLimit"
    # The B:USR1 went to the batch shell, which forwarded it through srun to the Python rank.
    assert (jobdir / "usr1.txt").exists(), "the USR1 backstop never reached the rank"
    usr1_at = float((jobdir / "usr1.txt").read_text())
    assert st.end_time is not None and usr1_at < st.end_time
    err = next(jobdir.glob("logs/*.err")).read_text()
    assert "SIGUSR1 received, forwarding" in err
    assert "DUE TO TIME LIMIT" in err
