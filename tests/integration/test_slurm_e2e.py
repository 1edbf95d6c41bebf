"""The whole chain on a real SLURM cluster: REST API → reconciler → sbatch → srun → worker → resubmit.

Each test starts a real controller (API + reconciler, SQLite in a fresh data dir) in-process and
submits runs with ``resources.scheduler = "slurm"`` and 1-minute attempts to the local cluster
(``deploy/slurm-local/up.sh``). SLURM's own view of every attempt is read back through
``SlurmScheduler.poll``. Waits are bounded polls; the step count comes from a calibration of this
machine (as in ``pyrecover demo``), so the chain needs ≥ 3 walltime windows here and elsewhere.

Skipped without a cluster; a failure under ``PYRECOVER_STRICT_INTEGRATION=1``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_cases import ChaosTrial
from slurm_harness import assert_ledger_adds_up, assert_same_weights

from controller import demo as demo_module
from controller.scheduler.slurm import SlurmScheduler
from shared.schemas import TrainingSpec
from shared.states import SchedulerJobState as S
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
WINDOW_S = 60  # --time=1, SLURM's smallest limit


@pytest.fixture(scope="module")
def cluster() -> SlurmScheduler:
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM CLI not installed: run deploy/slurm-local/up.sh")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    if out.returncode != 0 or not set(out.stdout.split()) & {"idle", "mixed", "allocated", "completing"}:
        pytest.skip(f"no usable SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()!r})")
    return SlurmScheduler()


@pytest.fixture(scope="module")
def demo() -> Any:
    """``pyrecover demo``'s planning and controller, reused so these runs are sized the same way."""
    return demo_module


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


@pytest.fixture(scope="module")
def calibration(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return demo_module.calibrate(sample[0], sample[1], tmp_path_factory.mktemp("calibrate"))


def steps_for(calibration: Any, *, windows: float) -> int:
    """Training steps that need ``windows`` 1-minute SLURM attempts on this machine."""
    return demo_module.plan_steps(calibration, WINDOW_S, demo_module.worker_stop_overhead(), windows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(cluster: SlurmScheduler, tmp_path: Path) -> Iterator[Any]:
    from controller.cli.client import Api

    settings = demo_module.demo_settings(
        tmp_path / "controller", free_port(), roots=[Path(tempfile.gettempdir())]
    )
    ctl = demo_module.DemoController(settings)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")}  # standalone: no reporter
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(chained / f"step-{steps}", ref_dir / "ref" / f"step-{steps}")


def test_chain_of_walltime_stops_completes_bit_identical_to_uninterrupted(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    # 5 windows planned: in CI three of these tests calibrate at once beside each other's jobs, and
    # the attempts then stepped up to ~2x faster than that calibration; at least 3 jobs even then.
    steps = steps_for(calibration, windows=5.0)
    run_id = submit(
        api, demo, sample, tmp_path, "e2e-chain", steps=steps, resources={"signal_lead_seconds": 0}
    )
    detail = wait_run(api, run_id, terminal, limit=900)
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert detail["state"] == "COMPLETED", (detail, jobs)
    assert_ledger_adds_up(detail)
    worked = [j for j in jobs if ran(j)]
    assert len(worked) >= 3, f"expected ≥ 3 chained SLURM jobs, got {jobs}"
    states = slurm_states(cluster, worked)
    assert S.TIMEOUT not in states.values(), f"the time-aware stop missed: {states}"
    assert set(states.values()) == {S.COMPLETED}, states
    # No --signal backstop here (Slurm may send it up to 60 s early, i.e. anywhere in a 1-minute
    # job): every stop before the last attempt is the worker's own deadline stop.
    assert [j.get("end_reason") for j in worked] == ["deadline_stop"] * (len(worked) - 1) + ["finished"]
    assert_same_as_uninterrupted(demo, sample, steps, tmp_path / "ckpt" / "e2e-chain", tmp_path)


def test_two_rank_srun_job_stops_and_resumes(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    # Two ranks share the two CPUs: each step takes about as long as one rank's. 3 windows: the
    # attempts may step ~2x faster than a calibration taken beside other tests' jobs (seen in CI).
    steps = steps_for(calibration, windows=3.0)
    run_id = submit(
        api,
        demo,
        sample,
        tmp_path,
        "e2e-ddp",
        steps=steps,
        resources={"ntasks_per_node": 2, "signal_lead_seconds": 0},
    )
    detail = wait_run(api, run_id, terminal, limit=600)
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert detail["state"] == "COMPLETED", (detail, jobs)
    assert_ledger_adds_up(detail)
    worked = [j for j in jobs if ran(j)]
    assert len(worked) >= 2, f"the 2-rank run never stopped and resumed: {jobs}"
    assert any(int(j.get("step_at_start") or 0) > 0 for j in worked[1:]), f"no attempt resumed: {jobs}"
    assert set(slurm_states(cluster, worked).values()) == {S.COMPLETED}


def test_a_config_error_only_the_worker_finds_fails_the_run_after_one_attempt(
    api: Any, demo: Any, sample: tuple[Path, Path], tmp_path: Path
) -> None:
    # Under SLURM the controller does not see the compute nodes' files (Settings.inputs_visible):
    # the missing dataset is the worker's to find, and its exit 3 is not retried.
    run_id = submit(
        api,
        demo,
        sample,
        tmp_path,
        "e2e-crash",
        steps=50,
        training={"dataset": str(tmp_path / "no-such-dataset.parquet")},
        policy={"max_failures_without_progress": 3, "backoff_seconds": 0},
    )
    detail = wait_run(api, run_id, terminal, limit=300)
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert detail["state"] == "FAILED", (detail, jobs)
    assert len(jobs) == 1, f"a configuration error is not retried: {jobs}"
    assert jobs[0].get("end_reason") == "config_error", jobs
    visible = json.dumps(detail) + json.dumps(items(api.get(f"/runs/{run_id}/events")))
    assert "no-such-dataset" in visible, "the worker's error is not visible through the API"


def test_external_scancel_is_resubmitted_and_api_cancel_scancels(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    steps = steps_for(calibration, windows=3.0)
    run_id = submit(api, demo, sample, tmp_path, "e2e-cancel", steps=steps)

    def running_job(detail: dict[str, Any]) -> bool:
        jobs = items(api.get(f"/runs/{run_id}/jobs"))
        return bool(jobs) and jobs[-1].get("state") == "RUNNING"

    wait_run(api, run_id, running_job, limit=120)
    first = items(api.get(f"/runs/{run_id}/jobs"))[-1]
    # An admin (or the user, by hand) cancels the job behind the controller's back: the attempt
    # ends `cancelled` and the run goes on with a new attempt (the controller owns retries).
    subprocess.run(["scancel", external_ids([first])[0]], check=True, timeout=30)

    def resubmitted(detail: dict[str, Any]) -> bool:
        return len(items(api.get(f"/runs/{run_id}/jobs"))) >= 2

    wait_run(api, run_id, resubmitted, limit=180)
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert jobs[0].get("end_reason") == "cancelled", jobs
    assert slurm_states(cluster, jobs[:1]) == {external_ids(jobs[:1])[0]: S.CANCELLED}
    # Cancelling through the API scancels the live attempt and ends the run CANCELLED.
    wait_run(api, run_id, running_job, limit=120)
    api.post(f"/runs/{run_id}/cancel")
    detail = wait_run(api, run_id, terminal, limit=180)
    assert detail["state"] == "CANCELLED"
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert slurm_states(cluster, jobs[-1:]) == {external_ids(jobs[-1:])[0]: S.CANCELLED}


def test_timeout_without_time_aware_stop_resumes_from_last_commit(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    # Time-aware stop off and no --signal backstop: SLURM kills attempt 1 at its limit (TIMEOUT,
    # ~90 s here); attempt 2 resumes from the newest periodic checkpoint and finishes.
    # Calibrated for windows *with* their stop margin; without the stop a window trains longer, and
    # the calibration may have run while other SLURM tests loaded the cores (CI runs three at once),
    # so ask for 4 of them to be sure attempt 1 cannot finish before the kill.
    steps = steps_for(calibration, windows=4.0)
    run_id = submit(
        api,
        demo,
        sample,
        tmp_path,
        "e2e-timeout",
        steps=steps,
        training={"timeaware_checkpointing": False, "checkpoint_frequency": max(5, steps // 8)},
        resources={"signal_lead_seconds": 0},
    )
    detail = wait_run(api, run_id, terminal, limit=600)
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    assert detail["state"] == "COMPLETED", (detail, jobs)
    assert_ledger_adds_up(detail)
    assert jobs[0].get("end_reason") == "timeout_killed", jobs
    assert slurm_states(cluster, jobs[:1]) == {external_ids(jobs[:1])[0]: S.TIMEOUT}
    resumed_at = int(jobs[1].get("step_at_start") or 0)
    assert 0 < resumed_at < steps, f"attempt 2 did not resume from a committed checkpoint: {jobs}"


def test_workers_cut_off_from_the_controller_for_three_job_ends_still_complete_with_right_figures(
    demo: Any,
    cluster: SlurmScheduler,
    sample: tuple[Path, Path],
    calibration: Any,
    tmp_path: Path,
    chaos_trial: ChaosTrial,
) -> None:
    """A report outage for the whole run (the workers' controller URL is a closed port: a partition
    between the compute nodes and the controller). The controller sees the checkpoint file system
    (``verify_checkpoints`` lists ``slurm``), so it reads each attempt's progress off the committed
    checkpoints: the run completes, every attempt shows the steps it really trained, and the failure
    budget (1 here: a single attempt judged wrongly as "no progress" would fail the run) is untouched."""
    from controller.cli.client import Api
    from controller.settings import Settings

    chaos_trial.name(
        "report outage: workers report to a closed port for the whole run",
        "controller + slurm backend, 1-minute jobs, checkpoints visible",
    )
    closed = free_port()  # bound, then released: nothing listens there
    base = demo_module.demo_settings(
        tmp_path / "controller", free_port(), roots=[Path(tempfile.gettempdir())]
    )
    settings = Settings.model_validate(
        base.model_dump()
        | {"public_url": f"http://127.0.0.1:{closed}", "verify_checkpoints": ["local", "slurm"]}
    )
    steps = steps_for(calibration, windows=6.0)  # ≥ 3 job ends even if attempts step 2x faster (CI)
    ctl = demo_module.DemoController(settings)
    ctl.start()
    try:
        api = Api(url=ctl.url, token=ctl.demo_token())
        run_id = submit(
            api,
            demo,
            sample,
            tmp_path,
            "e2e-outage",
            steps=steps,
            resources={"signal_lead_seconds": 0},
            policy={"max_failures_without_progress": 1},
        )
        detail = wait_run(api, run_id, terminal, limit=900)
        jobs = items(api.get(f"/runs/{run_id}/jobs"))
        metrics = items(api.get(f"/runs/{run_id}/metrics"))
        events = items(api.get(f"/runs/{run_id}/events"))
    finally:
        ctl.stop()
    assert detail["state"] == "COMPLETED", (detail, jobs)
    assert_ledger_adds_up(detail)
    assert metrics == [], "a report got through: the outage was not real"
    worked = [j for j in jobs if ran(j)]
    assert len(worked) >= 3, f"expected ≥ 3 job ends, got {jobs}"
    spans = [(int(j.get("step_at_start") or 0), int(j.get("step_at_end") or 0)) for j in worked]
    assert spans[0][0] == 0 and spans[-1][1] == steps, spans
    assert all(start < end for start, end in spans), spans
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end == next_start, f"attempt figures do not chain: {spans}"
    assert [j.get("end_reason") for j in worked] == ["deadline_stop"] * (len(worked) - 1) + ["finished"]
    found = [e for e in events if e.get("kind") == "checkpoint_found"]
    assert len(found) >= len(worked), events
    print(f"\nreport outage: {len(worked)} attempts, steps {spans}, all read off the disk")
    chaos_trial.figures |= {"attempts": len(worked), "spans": spans}
    assert_same_as_uninterrupted(demo, sample, steps, tmp_path / "ckpt" / "e2e-outage", tmp_path)
