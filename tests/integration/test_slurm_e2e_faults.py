"""Faults of the SLURM chain: SLURM's own kill at the limit (no time-aware stop), and workers cut
off from the controller for a whole run (progress read off the committed checkpoints).

A module of its own so the suite's second phase runs these long runs beside ``test_slurm_e2e.py``'s
(one module per xdist worker); the fixtures and polls are in ``slurm_e2e.py``. Skipped without a
cluster; a failure under ``PYRECOVER_STRICT_INTEGRATION=1``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from chaos_cases import ChaosTrial
from slurm_e2e import (  # noqa: F401 (fixtures, registered as the name before _fixture)
    api_fixture,
    assert_same_as_uninterrupted,
    calibration_fixture,
    cluster_fixture,
    controller_settings,
    demo_fixture,
    external_ids,
    free_port,
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

from controller.demo import DemoController
from controller.scheduler.slurm import SlurmScheduler
from shared.states import SchedulerJobState as S

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait]


def test_timeout_without_time_aware_stop_resumes_from_last_commit(
    api: Any, demo: Any, cluster: SlurmScheduler, sample: tuple[Path, Path], calibration: Any, tmp_path: Path
) -> None:
    # Time-aware stop off and no --signal backstop: SLURM kills attempt 1 at its limit (TIMEOUT,
    # ~90 s here); attempt 2 resumes from the newest periodic checkpoint and finishes.
    # Calibrated for windows *with* their stop margin; without the stop a window trains ~15 s
    # longer: 2.5 of them leave attempt 1 well short of the end when SLURM kills it.
    steps = steps_for(calibration, windows=2.5)
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

    chaos_trial.name(
        "report outage: workers report to a closed port for the whole run",
        "controller + slurm backend, 1-minute jobs, checkpoints visible",
    )
    closed = free_port()  # bound, then released: nothing listens there
    settings = controller_settings(
        tmp_path, public_url=f"http://127.0.0.1:{closed}", verify_checkpoints=["local", "slurm"]
    )
    steps = steps_for(calibration, windows=3.5)  # ≥ 3 job ends
    ctl = DemoController(settings)
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
