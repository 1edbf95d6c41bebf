"""A node of a 2-node run dies mid-step: NODE_FAIL, the next attempt excludes it, the run completes
bit-identical to an uninterrupted run of the same world size.

On the local cluster (``deploy/slurm-local/up.sh --nodes 3``) every node is a ``slurmd -N <node>``
on this host. The node "dies" as a crashed machine would: its slurmd is killed (SIGKILL) and the
job's processes on it (the rank and its slurmstepd) are frozen (SIGSTOP), so nothing on it answers
and nothing exits. Slurm would notice the silent node after ``SlurmdTimeout`` (300 s here); the test
marks it DOWN at once (``scontrol update state=down``), as a health check would, which is what
Slurm does at the timeout: the job ends NODE_FAIL. The reference is the same training as 1 node x
2 ranks, submitted through the same controller (bit-identical to 2 nodes x 1 rank, see
``test_slurm_multinode.py``). Prints the time from the node failure to training again.

The node is restored exactly as ``up.sh`` starts it (``slurmd -N <node>``, then ``state=resume``)
whatever happens. Not ``slurm_wait``: it changes a node's state, so it must not run beside other
SLURM tests. Skipped without 3 usable nodes or without root; a failure in CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_cases import ChaosTrial
from slurm_harness import (
    assert_ledger_adds_up,
    assert_same_weights,
    controller,
    hostnames,
    process_environ,
    require_nodes,
    sh,
    terminal,
    to_unix,
    training,
    usable_nodes,
)

from controller.scheduler.slurm import SlurmScheduler
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 400  # ~10-50 ms a step: still training well after the first periodic checkpoint (100)
RUN_DIR = Path("/run/slurm")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def _pid(pidfile: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    return None


def _ppid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def _job_processes_on(job_id: str, node: str) -> list[int]:
    """The job's ranks on ``node`` (their environment says so) and their parent slurmstepd."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = process_environ(int(entry.name))
        if (
            env.get("SLURM_JOB_ID") == job_id
            and env.get("SLURMD_NODENAME") == node
            and "SLURM_STEP_ID" in env
        ):
            found.append(int(entry.name))
    parents = {p for p in (_ppid(pid) for pid in found) if p is not None}
    stepds = [p for p in parents if b"slurmstepd" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return stepds + found


def _foreign_jobs_on(node: str, ours: set[str]) -> list[str]:
    out = sh("squeue", "-h", "-t", "R,CG", "-o", "%i %N", timeout=15).stdout
    return [
        job for job, nodes in (line.split(maxsplit=1) for line in out.splitlines() if " " in line)
        if job not in ours and node in hostnames(nodes)
    ]  # fmt: skip


@contextlib.contextmanager
def dead_node(node: str, job_id: str) -> Iterator[float]:
    """Kill ``node`` (slurmd SIGKILL, the job's processes there frozen) and mark it DOWN; yields the
    time it died. Afterwards: the frozen processes killed, ``slurmd -N node`` started again as
    ``up.sh`` does, the node resumed and usable."""
    pidfile = RUN_DIR / f"slurmd-{node}.pid"
    slurmd = _pid(pidfile)
    assert slurmd is not None, f"no slurmd running for {node} ({pidfile})"
    frozen = _job_processes_on(job_id, node)
    assert frozen, f"no process of job {job_id} found on {node}"
    try:
        os.kill(slurmd, signal.SIGKILL)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        died = time.time()
        down = sh("scontrol", "update", f"nodename={node}", "state=down", "reason=pyrecover test: node died")
        assert down.returncode == 0, down.stderr
        yield died
    finally:
        for pid in reversed(frozen):  # the ranks first, then their slurmstepd
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        started = sh("slurmd", "-N", node)
        assert started.returncode == 0 or _pid(pidfile) is not None, started.stderr
        end = time.monotonic() + 90
        while node not in usable_nodes() and time.monotonic() < end:
            sh("scontrol", "update", f"nodename={node}", "state=resume")  # "invalid state" once it is up
            time.sleep(1)
        assert node in usable_nodes(), f"{node} did not come back: {sh('sinfo', '-N').stdout}"


def test_a_dead_node_is_excluded_and_the_run_completes_bit_identical(
    sample: tuple[Path, Path], tmp_path: Path, chaos_trial: ChaosTrial
) -> None:
    chaos_trial.name("node failure: a slurmd killed mid-step", "controller + slurm backend, 2-node job")
    require_nodes(3)
    if os.geteuid() != 0:
        pytest.skip("killing and restarting a slurmd needs root")
    started = time.monotonic()
    ckpt = tmp_path / "ckpt"
    body = training(sample, STEPS, ckpt, checkpoint_frequency=100)
    with controller(tmp_path / "controller", roots=[tmp_path, sample[0].parent, sample[1]]) as runs:
        run_id = runs.submit("nodefail", body, nodes=2, ntasks_per_node=1)

        def checkpointed_and_training(run: dict[str, Any]) -> bool:
            jobs = runs.jobs(run_id)
            if terminal(run) or any(j["end_reason"] for j in jobs):
                pytest.fail(f"attempt 1 ended before the node died: {run['state']} {jobs}")
            return (
                bool(jobs)
                and jobs[0]["state"] == "RUNNING"
                and run.get("latest_checkpoint_step") is not None
                and run["current_step"] < STEPS - 100
            )

        runs.wait([run_id], checkpointed_and_training, limit=240)
        job = str(runs.jobs(run_id)[0]["external_id"])
        nodes = hostnames(sh("squeue", "-h", "-j", job, "-o", "%N").stdout.strip())
        assert len(nodes) == 2, f"job {job} runs on {nodes}"
        # The job's second node (not the batch host, where srun runs), unless another job is there.
        candidates = [n for n in reversed(nodes) if not _foreign_jobs_on(n, {job})]
        if not candidates:
            pytest.skip(f"other jobs share {nodes}: killing a node would fail them too")
        victim = candidates[0]
        step_then = runs.run(run_id)["current_step"]
        with dead_node(victim, job) as died:
            runs.wait([run_id], lambda r: len(runs.jobs(run_id)) >= 2, limit=120)
            reference = runs.submit(
                "reference", body | {"checkpoint_dir": str(tmp_path / "ref")}, ntasks_per_node=2
            )
            runs.wait([run_id, reference], terminal, limit=420)
        run, jobs, metrics = runs.run(run_id), runs.jobs(run_id), runs.metrics(run_id)
        excluded = runs.api.get(f"/runs/{run_id}/exclusions")
        events = runs.api.get(f"/runs/{run_id}/events", limit=1000)["items"]
        ref_run = runs.run(reference)

    assert run["state"] == "COMPLETED" and ref_run["state"] == "COMPLETED", (run, jobs, ref_run)
    assert_ledger_adds_up(run)
    assert [j["end_reason"] for j in jobs] == ["node_fail", "finished"], jobs
    assert [(e["host"], e["reason"], e["attempt"]) for e in excluded] == [(victim, "node_fail", 1)], excluded
    assert any(e["kind"] == "nodes_excluded" and victim in e["message"] for e in events), events
    second = str(jobs[1]["external_id"])
    script = (tmp_path / "controller" / "runs" / str(run_id) / "logs" / "attempt-0002.sbatch").read_text()
    assert f"#SBATCH --exclude={victim}" in script, script
    ran_on = hostnames(SlurmScheduler().poll([second])[second].extra["NodeList"])
    assert len(ran_on) == 2 and victim not in ran_on, ran_on
    resumed = int(jobs[1]["step_at_start"])
    assert 0 < resumed < STEPS, jobs
    assert_same_weights(ckpt / "nodefail" / f"step-{STEPS}", tmp_path / "ref" / "reference" / f"step-{STEPS}")

    ended = to_unix(jobs[0]["end_time"])
    next_start = to_unix(jobs[1]["start_time"])
    first_step = min(to_unix(m["time"]) or 0.0 for m in metrics if m["attempt"] == 2)
    assert ended is not None and next_start is not None
    chaos_trial.figures |= {
        "node_fail_to_job_end_s": round(ended - died, 1),
        "node_fail_to_training_s": round(first_step - died, 1),
    }
    print(
        f"\n{victim} of {nodes} died at step ~{step_then} (job {job}); attempt 2 (job {second}) ran on "
        f"{ran_on} from step {resumed}\nnode failure -> job ended NODE_FAIL {ended - died:.1f} s, next job "
        f"started {next_start - died:.1f} s, training again {first_step - died:.1f} s; "
        f"test {time.monotonic() - started:.1f} s"
    )
