"""The launch contract end to end without torch: JobSpec from ``controller.reconciler.jobspec`` →
local backend → a fake worker that reads the environment like the real one and reports with
``HttpReporter``."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fake_report_server import FakeController

from controller.reconciler.jobspec import build_job_spec
from controller.scheduler.local import LocalScheduler
from controller.settings import Settings
from shared.schemas import ResourcesSpec, TrainingSpec
from shared.states import SchedulerJobState

FAKE_WORKER = r"""
import os, sys, time
from worker.report_client import HttpReporter
deadline = float(os.environ["PYRECOVER_DEADLINE"])
r = HttpReporter.from_env(flush_interval=0.05)
r.emit("started", step=0, world_size=int(os.environ["WORLD_SIZE"]), deadline=deadline)
step = 0
while time.time() < deadline - 1.0:  # a time-aware stop, one second before the walltime
    step += 1
    r.emit("progress", step=step, loss=1.0 / step, lr=0.1, tokens_seen=step)
    time.sleep(0.05)
r.emit("stopping", step=step, reason="deadline", deadline=deadline)
r.close()
print("argv tail:", " ".join(sys.argv[-4:]))
"""


@pytest.fixture
def controller() -> FakeController:
    ctl = FakeController()
    ctl.start()
    yield ctl
    ctl.stop()


def test_local_job_reports_to_the_controller_and_stops_before_walltime(
    controller: FakeController, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        port=controller.port,
        worker_python=sys.executable,
        checkpoint_root=tmp_path / "ck",
    )
    training = TrainingSpec(dataset="d", tokenizer_name_or_path="t", training_steps=10, lr_warmup_steps=1)
    spec = build_job_spec(
        settings=settings,
        run_id=3,
        run_name="demo",
        attempt=1,
        training=training,
        resources=ResourcesSpec(scheduler="local", time_limit="4s", signal_lead_seconds=0),
        token="secret-token",
    )
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    spec = replace(spec, argv=[sys.executable, str(script), *spec.argv[3:]])
    sched = LocalScheduler(tmp_path / "jobs", kill_wait_s=2)
    job_id = sched.submit(spec)
    end = time.monotonic() + 30
    while not (status := sched.poll([job_id])[job_id]).state.finished:
        assert time.monotonic() < end
        time.sleep(0.1)
    assert status.state is SchedulerJobState.COMPLETED, spec.stderr.read_text()
    types = [e["type"] for _, e in sorted(controller.stored.items())]
    assert types[0] == "started" and types[-1] == "stopping" and "progress" in types
    assert controller.seqs(1) == list(range(len(types)))
    assert set(controller.auth) == {"Bearer secret-token"}
    assert "--resume-from-checkpoint latest" in spec.stdout.read_text()
