"""The real worker under the real ``slurm`` backend, without the controller: 2 ranks via srun.

Pins the worker ↔ SLURM contract the controller relies on: srun starts one rank per task (gloo DDP
over MASTER_ADDR/MASTER_PORT from the sbatch script), the worker reads its deadline from
``squeue -o %e``, stops by itself before ``--time=1`` runs out with a committed checkpoint and exits
0 (SLURM state COMPLETED, never TIMEOUT), and the next job resumes from that checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from slurm_harness import require_nodes

from controller.scheduler.base import JobSpec, JobStatus
from controller.scheduler.slurm import SlurmScheduler
from shared.schemas import ResourcesSpec, TrainingSpec
from shared.states import SchedulerJobState as S

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait]


@pytest.fixture(scope="module")
def sched() -> SlurmScheduler:
    require_nodes(1)
    return SlurmScheduler()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        from worker.data.prepare import ensure_sample_data
    except ImportError as exc:
        pytest.skip(f"worker.data.prepare is not available yet: {exc}")
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def attempt_spec(sample: tuple[Path, Path], root: Path, attempt: int) -> JobSpec:
    training = TrainingSpec(
        dataset=str(sample[0]),
        tokenizer_name_or_path=str(sample[1]),
        training_steps=1_000_000,  # never reached: every attempt must end by its deadline stop
        sequence_length=32,
        batch_size=4,
        checkpoint_dir=str(root / "ckpt"),
        checkpoint_frequency=-1,  # only the final (deadline) checkpoint
        log_loss_to_csv=False,
        # Slurm 22.05 here kills a 1-minute job at ~62 s and two ranks may take 30+ s to start on a
        # busy 2-core machine: the default 15 s margin would leave attempt 2 no time for a step.
        deadline_margin=5.0,
    )
    argv = [sys.executable, "-m", "worker", *training.to_worker_args()]
    argv += ["--experiment-name", "ddp", "--resume-from-checkpoint", "latest"]
    return JobSpec(
        run_id=991,
        run_name="it-worker",
        attempt=attempt,
        job_name=f"pyrecover-r991-a{attempt}",
        argv=argv,
        env={"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
        # No --signal backstop (Slurm may send it up to 60 s early in a 1-minute job).
        resources=ResourcesSpec(
            scheduler="slurm",
            time_limit="1",
            ntasks_per_node=2,
            signal_lead_seconds=0,
            env={"OMP_NUM_THREADS": "1"},  # the run's own (the renderer checks it against the allow-list)
        ),
        workdir=root,
        stdout=root / "logs" / f"attempt-{attempt:04d}.out",
        stderr=root / "logs" / f"attempt-{attempt:04d}.err",
    )


def run_attempt(sched: SlurmScheduler, spec: JobSpec) -> JobStatus:
    job = sched.submit(spec)
    end = time.monotonic() + 240
    while time.monotonic() < end:
        st = sched.poll([job])[job]
        if st.state.finished:
            return st
        time.sleep(1)
    sched.cancel(job)
    pytest.fail(f"job {job} did not end within 240 s")


def committed_steps(root: Path) -> list[int]:
    run = root / "ckpt" / "ddp"
    return sorted(int(p.name.split("-")[1]) for p in run.glob("step-*") if (p / "manifest.json").exists())


def test_two_rank_worker_stops_before_walltime_and_resumes(
    sched: SlurmScheduler, sample: tuple[Path, Path], tmp_path: Path
) -> None:
    for attempt in (1, 2):
        spec = attempt_spec(sample, tmp_path, attempt)
        st = run_attempt(sched, spec)
        log = spec.stderr.read_text()
        assert (st.state, st.exit_code) == (S.COMPLETED, 0), f"attempt {attempt}: {st}\n{log[-3000:]}"
        assert "(source: squeue)" in log, "the worker did not take its deadline from squeue"
        assert "stopped at step" in log
        steps = committed_steps(tmp_path)
        assert len(steps) == attempt, f"attempt {attempt} committed no new checkpoint: {steps}"
    log2 = attempt_spec(sample, tmp_path, 2).stderr.read_text()
    assert f"resumed from {tmp_path / 'ckpt' / 'ddp' / f'step-{steps[0]}'}" in log2
