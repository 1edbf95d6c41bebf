"""A job in the high-priority partition preempts a run's job; the controller resubmits; the run ends
bit-identical to an uninterrupted one.

On the local cluster (``deploy/slurm-local/up.sh``) partition ``high`` preempts ``debug`` with
PreemptMode=CANCEL and a 30 s GraceTime: the run's job gets SIGTERM, the worker saves at its next
step boundary and exits (or, if it could not, Slurm kills it when the grace runs out and the next
attempt resumes from the last periodic checkpoint). Either way the attempt must end ``preempted``,
the run must complete, and its final weights must equal those of the same training run standalone
without interruption (started beside it, to save wall time). Prints the time from the preemption to
training again. Skipped without a cluster; a failure in CI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from chaos_cases import ChaosTrial
from slurm_harness import (
    assert_ledger_adds_up,
    assert_same_weights,
    controller,
    finish,
    require_nodes,
    sh,
    start_reference,
    terminal,
    to_unix,
    training,
)

from controller.scheduler.slurm import SlurmScheduler
from shared.states import SchedulerJobState as S
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Long enough that the job is still training when the preemptor arrives (a step takes ~10-50 ms
# here; the first periodic checkpoint is at step 100), short enough to resume and finish quickly.
STEPS = 600


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def test_preempted_job_is_resubmitted_and_the_run_ends_bit_identical(
    sample: tuple[Path, Path], tmp_path: Path, chaos_trial: ChaosTrial
) -> None:
    chaos_trial.name("preemption by a high-priority job", "controller + slurm backend, partition_prio")
    require_nodes(1)
    started = time.monotonic()
    body = training(sample, STEPS, tmp_path / "ckpt", checkpoint_frequency=100)
    reference = start_reference(body, tmp_path / "reference", "reference", tmp_path)
    slurm = SlurmScheduler()
    preemptor: str | None = None
    try:
        with controller(
            tmp_path / "controller", roots=[tmp_path, sample[0].parent, sample[1].parent]
        ) as runs:
            run_id = runs.submit("preempted", body)

            def checkpointed_and_training(run: dict[str, Any]) -> bool:
                jobs = runs.jobs(run_id)
                return (
                    bool(jobs)
                    and jobs[0]["state"] == "RUNNING"
                    and run.get("latest_checkpoint_step") is not None
                    and run["current_step"] < STEPS - 100
                )

            # A committed checkpoint first: without one a preemption before the worker could save
            # would restart from step 0, which proves nothing about resuming.
            runs.wait([run_id], checkpointed_and_training, limit=180)
            victim = str(runs.jobs(run_id)[0]["external_id"])
            node = sh("squeue", "-h", "-j", victim, "-o", "%N").stdout.strip()
            assert node, f"job {victim} has no node"
            preempted_at = time.time()
            step_then = runs.run(run_id)["current_step"]
            out = sh(
                "sbatch", "--parsable", "--partition=high", f"--nodelist={node}", "--exclusive",
                "--job-name=preemptor", f"--output={tmp_path / 'preemptor.out'}", "--wrap=sleep 5",
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            preemptor = out.stdout.strip().split(";")[0]
            runs.wait([run_id], terminal, limit=300)
            run, jobs, metrics = runs.run(run_id), runs.jobs(run_id), runs.metrics(run_id)
    finally:
        finish(reference, timeout=300)

    assert run["state"] == "COMPLETED", (run, jobs)
    assert_ledger_adds_up(run)
    ran = [j for j in jobs if j["end_reason"] != "cancelled" or j["step_at_end"] is not None]
    assert [j["end_reason"] for j in ran] == ["preempted", "finished"], jobs
    polled = slurm.poll([victim, preemptor])
    assert polled[victim].state is S.PREEMPTED, polled[victim]
    assert polled[preemptor].state is S.COMPLETED and polled[preemptor].extra["NodeList"] == node
    # Slurm's words for the victim: COMPLETED when the worker saved and left within the grace
    # (PreemptTime set), PREEMPTED when Slurm had to kill it at the end of the grace.
    slurm_said = polled[victim].extra["slurm_state"]
    resumed = ran[1]
    resumed_step = int(resumed["step_at_start"])
    assert 0 < resumed_step < STEPS, jobs
    if slurm_said == "COMPLETED":
        assert resumed_step >= step_then, f"the SIGTERM save is older than the step seen before: {jobs}"
    assert_same_weights(
        tmp_path / "ckpt" / "preempted" / f"step-{STEPS}",
        tmp_path / "reference" / "reference" / f"step-{STEPS}",
    )

    # Figures: preemption → victim ended → next attempt started (Slurm) → its first trained step.
    ended = to_unix(ran[0]["end_time"])
    next_start = to_unix(resumed["start_time"])
    first_step = min(to_unix(m["time"]) or 0.0 for m in metrics if m["attempt"] == resumed["number"])
    assert ended is not None and next_start is not None
    chaos_trial.figures |= {"preemption_to_training_s": round(first_step - preempted_at, 1)}
    print(
        f"\npreempted at step ~{step_then} (Slurm: {slurm_said}, exit {polled[victim].exit_code}); "
        f"attempt {resumed['number']} resumed from step {resumed_step}\n"
        f"preemption -> job ended {ended - preempted_at:.1f} s, next job started "
        f"{next_start - preempted_at:.1f} s, training again {first_step - preempted_at:.1f} s; "
        f"test {time.monotonic() - started:.1f} s"
    )
