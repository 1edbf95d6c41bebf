"""The whole chain on a real SLURM cluster: REST API → reconciler → sbatch → srun → worker → resubmit.

Each test starts a real controller (API + reconciler, SQLite in a fresh data dir) in-process and
submits runs with ``resources.scheduler = "slurm"`` and 1-minute attempts to the local cluster
(``deploy/slurm-local/up.sh``). SLURM's own view of every attempt is read back through
``SlurmScheduler.poll``. Waits are bounded polls; the step count comes from a calibration of this
machine (as in ``pyrecover demo``) and the attempts' slow steps (``slurm_e2e.SLOW_STEP_S``), so the
chain needs ≥ 3 walltime windows here and elsewhere.
The faults of the same chain (SLURM's kill, a report outage) are in ``test_slurm_e2e_faults.py``;
the fixtures and polls both use are in ``slurm_e2e.py``.

Skipped without a cluster; a failure under ``PYRECOVER_STRICT_INTEGRATION=1``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from slurm_e2e import (  # noqa: F401 (fixtures, registered as the name before _fixture)
    api_fixture,
    assert_same_as_uninterrupted,
    calibration_fixture,
    cluster_fixture,
    demo_fixture,
    external_ids,
    items,
    ran,
    sample_fixture,
    slurm_states,
    steps_for,
    submit,
    terminal,
    wait_run,
)
from slurm_harness import assert_ledger_adds_up

from controller.scheduler.slurm import SlurmScheduler
from shared.states import SchedulerJobState as S

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait]


def test_chain_of_walltime_stops_completes_bit_identical_to_uninterrupted(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    steps = steps_for(calibration, windows=3.5)  # ≥ 3 jobs
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
    # Two ranks share the two CPUs and step slower than one rank's plan: 2 windows give ≥ 2 jobs
    # (measured beside the other SLURM tests: 4 jobs for 2.5 windows planned).
    steps = steps_for(calibration, windows=2.0)
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
