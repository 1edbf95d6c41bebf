"""The local backend with the real worker, driven attempt by attempt (no controller, no database).

Each attempt is a fresh ``submit`` of the JobSpec ``controller.reconciler.jobspec`` builds; the worker stops
itself (after ``--stop-after-steps`` or before the walltime, whichever comes first) with a final
checkpoint, and the next attempt resumes. After ≥ 3 attempts the final weights
must be bit-identical (``pyrecover checkpoint compare``) to an uninterrupted standalone run, and
every event the worker reported (over real HTTP, with the run's token file) arrived exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fake_report_server import FakeController

from controller.reconciler.jobspec import build_job_spec
from controller.scheduler.local import LocalScheduler
from controller.settings import Settings
from shared.schemas import ResourcesSpec, TrainingSpec
from shared.states import SchedulerJobState

pytestmark = pytest.mark.slow
prepare = pytest.importorskip("worker.data.prepare", reason="the sample data preparation is not there yet")

STEPS = 60
PER_ATTEMPT = 25  # --stop-after-steps: ≥ 3 attempts whatever this machine's speed
WALLTIME = "40s"  # the deadline stop may come first on a slow or busy machine; both resume the same way


@pytest.fixture
def controller() -> Iterator[FakeController]:
    ctl = FakeController()
    ctl.start()
    yield ctl
    ctl.stop()


def test_three_walltime_windows_resume_bit_exactly(controller: FakeController, tmp_path: Path) -> None:
    dataset, tokenizer = prepare.ensure_sample_data(tmp_path / "data")
    training = TrainingSpec(
        dataset=str(dataset.resolve()),
        tokenizer_name_or_path=str(tokenizer.resolve()),
        training_steps=STEPS,
        model_dtype="fp32",
        lr_warmup_steps=5,
        checkpoint_frequency=10,
        seed=11,
    )
    settings = Settings(
        data_dir=tmp_path / "ctl",
        port=controller.port,
        worker_python=sys.executable,
        checkpoint_root=tmp_path / "ck",
        data_roots=[tmp_path],
    )
    sched = LocalScheduler(tmp_path / "ctl" / "local-jobs", kill_wait_s=5)
    resources = ResourcesSpec(scheduler="local", time_limit=WALLTIME, signal_lead_seconds=0)
    states = []
    for attempt in range(1, 9):
        spec = build_job_spec(
            settings=settings,
            run_id=1,
            run_name="chain",
            attempt=attempt,
            training=training,
            resources=resources,
            token="run-token",
        )
        spec = replace(spec, argv=[*spec.argv, "--stop-after-steps", str(PER_ATTEMPT)])
        job_id = sched.submit(spec)
        end = time.monotonic() + 120
        while not (status := sched.poll([job_id])[job_id]).state.finished:
            assert time.monotonic() < end, "attempt did not end"
            time.sleep(0.5)
        states.append(status.state)
        assert status.state is SchedulerJobState.COMPLETED, spec.stderr.read_text()[-3000:]
        if any(e["type"] == "finished" for (a, _), e in controller.stored.items() if a == attempt):
            break
    assert len(states) >= 3, f"only {len(states)} attempts: the walltime was not short enough"
    for attempt in range(1, len(states)):
        kinds = [e["type"] for (a, _), e in sorted(controller.stored.items()) if a == attempt]
        assert kinds[0] == "started" and "stopping" in kinds and "finished" not in kinds
    assert set(controller.auth) == {"Bearer run-token"}

    reference = tmp_path / "reference"
    argv = TrainingSpec(**(training.model_dump() | {"checkpoint_dir": str(reference)})).to_worker_args()
    ref = subprocess.run(
        [sys.executable, "-m", "worker", *argv, "--experiment-name", "chain"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    chained = tmp_path / "ck" / "chain" / f"step-{STEPS}"
    compare = subprocess.run(
        [
            sys.executable,
            "-c",
            "from controller.cli import main; main()",
            "checkpoint",
            "compare",
            "--optimizer",
            str(chained),
            str(reference / "chain" / f"step-{STEPS}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert compare.returncode == 0 and "EQUAL" in compare.stdout, compare.stdout + compare.stderr
