"""The SLURM end-to-end tests' shared part: fixtures (a real cluster, the demo's planning, sample
data, one calibration), a controller per test and the polls its tests use.

The tests themselves are in ``test_slurm_e2e.py`` (the chain, two ranks, a config error, scancel)
and ``test_slurm_e2e_faults.py`` (SLURM's kill at the limit, a report outage): two modules, so the
suite's second phase runs their long runs side by side (one module per xdist worker). A module
imports the fixtures it uses from here (``<name>_fixture``, registered as ``<name>``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_harness import assert_same_weights, require_nodes

from controller import demo as demo_module
from controller.demo.plan import Calibration
from controller.scheduler.slurm import SlurmScheduler
from shared.envvars import TEST_PREFIX
from shared.schemas import TrainingSpec
from shared.states import SchedulerJobState as S
from worker.data.prepare import ensure_sample_data

CALIBRATION_ENV = "PYRECOVER_SUITE_CALIBRATION"
SLOW_STEP_S = 0.5
"""Every step of these runs' attempts sleeps this long first (``worker.testhooks`` SLOW_STEPS, set by
the controller's admin prologue): a 1-minute window is then ~2/3 waiting, so the suite's second
phase runs several chains on two cores without their load deciding how many windows each takes,
and the uninterrupted reference (no hook: it proves the hook changes no number) costs ~1/3 of a
window per window."""
SLOW_STEPS_PROLOGUE = [f"export {TEST_PREFIX}SLOW_STEPS={SLOW_STEP_S:g}"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
WINDOW_S = 60  # --time=1, SLURM's smallest limit


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture() -> SlurmScheduler:
    require_nodes(1)
    return SlurmScheduler()


@pytest.fixture(scope="module", name="demo")
def demo_fixture() -> Any:
    """``pyrecover demo``'s planning and controller, reused so these runs are sized the same way."""
    return demo_module


@pytest.fixture(scope="module", name="sample")
def sample_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


@pytest.fixture(scope="module", name="calibration")
def calibration_fixture(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    return shared_calibration(sample, tmp_path_factory.mktemp("calibrate"))


def shared_calibration(sample: tuple[Path, Path], work: Path) -> Calibration:
    """This machine's calibration, measured once per suite run when ``PYRECOVER_SUITE_CALIBRATION``
    names a file (``tests/suite.py`` sets it): the first test module to need it measures it while
    the others wait on the file's lock, then every module plans from the same figures. One
    measurement taken while other modules' jobs load the cores would plan attempts that then step
    up to ~2x faster than planned, and end runs in fewer windows than a test needs."""
    cache = os.environ.get(CALIBRATION_ENV)
    if not cache:
        return demo_module.calibrate(sample[0], sample[1], work)
    path = Path(cache)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists():
            return Calibration(**json.loads(path.read_text()))
        measured = demo_module.calibrate(sample[0], sample[1], work)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(measured)))
        os.replace(tmp, path)
        return measured


def steps_for(calibration: Calibration, *, windows: float) -> int:
    """Training steps that need ``windows`` 1-minute SLURM attempts on this machine (with the
    attempts' slow steps). Attempts may step slower than planned (other tests' jobs share the
    cores), so a run takes at least that many windows; hardly faster, so a test asks for little
    more than the windows it needs."""
    slowed = dataclasses.replace(calibration, step_time=calibration.step_time + SLOW_STEP_S)
    return demo_module.plan_steps(slowed, WINDOW_S, demo_module.worker_stop_overhead(), windows)


def controller_settings(tmp_path: Path, **overrides: Any) -> Any:
    """``pyrecover demo``'s controller settings, with the slow-steps prologue and ``overrides``."""
    from controller.settings import Settings

    base = demo_module.demo_settings(
        tmp_path / "controller", free_port(), roots=[Path(tempfile.gettempdir())]
    )
    return Settings.model_validate(base.model_dump() | {"slurm_prologue": SLOW_STEPS_PROLOGUE} | overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(name="api")
def api_fixture(cluster: SlurmScheduler, tmp_path: Path) -> Iterator[Any]:
    from controller.cli.client import Api

    ctl = demo_module.DemoController(controller_settings(tmp_path))
    ctl.start()
    try:
        yield Api(url=ctl.url, token=ctl.demo_token())  # auth is on, as in every controller
    finally:
        ctl.stop()


def items(page: Any) -> list[dict[str, Any]]:
    from controller.cli.client import items as _items

    return list(_items(page))


def submit(api: Any, demo: Any, sample: tuple[Path, Path], tmp_path: Path, name: str, **kw: Any) -> int:
    training = demo.training_body(sample[0], sample[1], kw.pop("steps"), str(tmp_path / "ckpt"))
    training |= kw.pop("training", {})
    body = {
        "name": name,
        "training": training,
        "resources": {
            "scheduler": "slurm",
            "time_limit": "1",
            "partition": "debug",
            # The threads the calibration measured with: a worker with more trains faster than
            # planned and may finish in fewer windows than a test needs.
            "env": dict(demo.WORKER_ENV),
            **kw.pop("resources", {}),
        },
        "policy": {"max_attempts": 12, "backoff_seconds": 1, **kw.pop("policy", {})},
    }
    assert not kw, kw
    return int(api.post("/runs", body)["id"])


def wait_run(api: Any, run_id: int, until: Any, limit: float) -> dict[str, Any]:
    end = time.monotonic() + limit
    while True:
        detail = dict(api.get(f"/runs/{run_id}"))
        if until(detail):
            return detail
        if time.monotonic() > end:
            jobs = items(api.get(f"/runs/{run_id}/jobs"))
            pytest.fail(f"run {run_id} still {detail.get('state')} after {limit} s; jobs: {jobs}")
        time.sleep(2)


def terminal(detail: dict[str, Any]) -> bool:
    return detail.get("state") in TERMINAL


def external_ids(jobs: list[dict[str, Any]]) -> list[str]:
    return [
        str(j.get("external_id") or j.get("job_id")) for j in jobs if j.get("external_id") or j.get("job_id")
    ]


def slurm_states(cluster: SlurmScheduler, jobs: list[dict[str, Any]]) -> dict[str, S]:
    return {k: v.state for k, v in cluster.poll(external_ids(jobs)).items()}


def ran(job: dict[str, Any]) -> bool:
    """An attempt that actually ran (not a pre-queued successor cancelled because the run finished)."""
    return job.get("end_reason") != "cancelled" or job.get("step_at_end") is not None


def assert_same_as_uninterrupted(
    demo: Any, sample: tuple[Path, Path], steps: int, chained: Path, tmp_path: Path
) -> None:
    """The same training, uninterrupted and standalone, ends with exactly the same weights and
    optimizer state as the run whose checkpoint directory is ``chained``."""
    ref_dir = tmp_path / "reference"
    spec = TrainingSpec(**demo.training_body(sample[0], sample[1], steps, str(ref_dir)))
    argv = [sys.executable, "-m", "worker", *spec.to_worker_args(), "--experiment-name", "ref"]
    # Standalone (no reporter), with the attempts' one thread: two references side by side, each
    # with a thread per core, stepped ~4x slower than the calibration in phase 2.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")} | dict(demo.WORKER_ENV)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(chained / f"step-{steps}", ref_dir / "ref" / f"step-{steps}")
