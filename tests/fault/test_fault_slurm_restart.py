"""slurmctld and slurmd restarted in the middle of a run on the local SLURM cluster.

A run whose attempts are 1-minute SLURM jobs (it needs two of them) is driven by a real
controller. While attempt 1 trains, slurmctld and every slurmd (one per node) are stopped
(SIGTERM, as ``systemctl restart`` does), left down for a few seconds (the controller's ``squeue``
polls fail meanwhile) and started again. Checked: the job survives the restart and ends by its own
time-aware stop, the next attempt is submitted to the restarted slurmctld and runs, the run
completes, attempt numbers are contiguous and no job was submitted twice.

The daemons are restarted only when no job but this run's is in the queue (other tests' jobs
would be disturbed); the test always leaves every daemon running (``deploy/slurm-local/up.sh``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from chaos import REPO, Deadline, chaos_rng, record
from ctlrun import (
    attempts,
    make_controller,
    measure_step_seconds,
    submit,
    training,
    wait_terminal,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 60  # --time=1, SLURM's smallest limit
RUN_DIR = Path("/run/slurm")


def _sh(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _pid(pidfile: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    return None


def _daemons() -> dict[tuple[str, ...], Path]:
    """The command that starts each daemon of the local cluster → its pid file: slurmctld, and one
    ``slurmd -N <node>`` per node (deploy/slurm-local runs them all on this host)."""
    daemons: dict[tuple[str, ...], Path] = {("slurmctld",): RUN_DIR / "slurmctld.pid"}
    for pidfile in sorted(RUN_DIR.glob("slurmd-*.pid")):
        daemons[("slurmd", "-N", pidfile.stem.removeprefix("slurmd-"))] = pidfile
    return daemons


def _node_usable() -> bool:
    out = _sh("sinfo", "-h", "-o", "%T", timeout=15)
    return out.returncode == 0 and bool(
        set(out.stdout.split()) & {"idle", "mixed", "allocated", "completing"}
    )


def _queue() -> list[str]:
    out = _sh("squeue", "-h", "-o", "%i %j", timeout=15)
    return out.stdout.split("\n") if out.returncode == 0 else []


@pytest.fixture
def cluster() -> None:
    if shutil.which("sinfo") is None or shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed: run deploy/slurm-local/up.sh")
    if os.geteuid() != 0:
        pytest.skip("restarting slurmctld/slurmd needs root")
    daemons = _daemons()
    if not _node_usable() or len(daemons) < 2 or any(_pid(f) is None for f in daemons.values()):
        pytest.skip("no local SLURM cluster running (deploy/slurm-local/up.sh)")


def _restart_daemons(down_s: float, bound: Deadline) -> float:
    t0 = time.monotonic()
    daemons = _daemons()
    for command, pidfile in daemons.items():
        pid = _pid(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            what = " ".join(command)
            bound.wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), f"{what} to stop", limit=60)
    time.sleep(down_s)
    for command in daemons:
        started = _sh(*command)
        assert started.returncode == 0, f"{' '.join(command)} did not start: {started.stderr}"
    bound.wait_for(_node_usable, "the node to be usable again", every=1.0, limit=90)
    return round(time.monotonic() - t0, 1)


def _ensure_cluster_up() -> None:
    daemons = _daemons()
    if len(daemons) > 1 and all(_pid(f) is not None for f in daemons.values()) and _node_usable():
        return
    # Without --nodes, up.sh keeps the node count configured here.
    _sh(str(REPO / "deploy" / "slurm-local" / "up.sh"), timeout=180)


def test_slurm_daemons_restarted_mid_run(
    cluster: None, sample: tuple[Path, Path], zygote: Any, tmp_path: Path
) -> None:
    rng = chaos_rng("slurm-restart")
    bound = Deadline(600, "slurmctld + slurmd restart")
    started = time.monotonic()
    step_s = measure_step_seconds(zygote, sample, tmp_path / "calibration")
    # ~1.3 windows of training (each window: 60 s - start-up - the ~21 s stop allowance - the save),
    # at the standalone step time: the worker beside a controller steps about as fast as alone now
    # that reports are cheap, and 1.5x slower planned steps could fit the run in one job.
    steps = int(1.3 * (WINDOW_S - 30) / step_s)
    ctl = make_controller(tmp_path / "controller")
    ctl.start()
    outage = 0.0
    try:
        run_id = submit(
            ctl,
            "slurmrestart",
            training(sample, steps, tmp_path / "ckpt"),
            scheduler="slurm",
            time_limit="1",
            resources={"partition": "debug"},
            policy={"max_attempts": 8},
        )

        def training_now() -> bool:
            jobs = attempts(ctl, run_id)
            return (
                bool(jobs)
                and jobs[-1]["state"] == "RUNNING"
                and ctl.api("GET", f"/runs/{run_id}")["current_step"] not in (None, 0)
            )

        bound.wait_for(training_now, "attempt 1 to train", every=1.0, limit=240)
        ours = {str(j["external_id"]) for j in attempts(ctl, run_id)}
        foreign = [line for line in _queue() if line.strip() and line.split()[0] not in ours]
        if foreign:
            pytest.skip(
                f"other jobs are in the SLURM queue; not restarting the daemons under them: {foreign}"
            )
        time.sleep(rng.uniform(1.0, 8.0))
        outage = _restart_daemons(rng.uniform(2.0, 8.0), bound)
        run = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        assert run["state"] == "COMPLETED", (run, jobs)
        ran = [j for j in jobs if j["end_reason"] != "cancelled" or j["step_at_end"] is not None]
        assert len(ran) >= 2, f"the run never went on to a second SLURM job: {jobs}"
        assert ran[0]["end_reason"] in ("deadline_stop", "finished"), f"attempt 1 did not survive: {jobs}"
        assert [j["number"] for j in jobs] == list(range(1, len(jobs) + 1)), jobs
        ids = [j["external_id"] for j in jobs]
        assert None not in ids and len(set(ids)) == len(ids), ids
    finally:
        ctl.stop()
        _ensure_cluster_up()
    record(
        "slurmctld + slurmd restarted mid-run",
        path="controller + slurm backend (local cluster, 1-minute jobs)",
        trials=1,
        survived=1,
        data_lost="none: the running job survived, the next job ran, run COMPLETED",
        outage_seconds=outage,
        attempts=len(jobs),
        end_reasons=[j["end_reason"] for j in jobs],
        seconds=round(time.monotonic() - started, 1),
    )
