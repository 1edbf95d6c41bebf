"""Resubmission gap and walltime utilisation on a real SLURM cluster, with and without pre-queue.

**Gap.** The time from job N's last instruction to job N+1's first one, measured by the jobs
themselves (``time.time()`` written at their start and end, sub-second, unlike SLURM's 1-second
timestamps). Both modes run the same chain of short jobs through the real ``SlurmScheduler``:

* ``poll``: what a controller without pre-queue does: poll (batched ``squeue``) every
  ``--poll-interval`` seconds (starting at a random phase, as a reconcile loop would be), and
  submit job N+1 once job N has ended;
* ``prequeue``: job N+1 is submitted with ``--dependency=afterany:<N>`` while job N still runs (the
  controller does this when the worker reports ``stopping``), so SLURM starts it as soon as N ends.

**Walltime utilisation.** The whole chain: a controller (in this process, SQLite, the ``slurm``
backend) and the real worker training a tiny model in 1-minute attempts (SLURM's smallest limit),
sized to need about ``--windows`` attempts: with ``policy.prequeue_successor`` on and the walltime
signal on (``--signal-lead``, the API's default 30 s: SLURM sends USR1 that long before the limit
and the worker tightens its deadline to it), then with the signal off (the baseline), then without
pre-queue. Per attempt, from the controller's goodput accounting (``GET /runs/{id}/jobs``): the time
that ended in a committed checkpoint (``productive_committed_s``) / the time SLURM allocated
(``allocated_s``), and the end reason (goal: ``deadline_stop`` for every attempt but the last, at
>= 80 % each, with the signal on); plus the attempt-to-attempt gap from the attempts' start/end times.

    python bench/resubmit_gap.py [--jobs 8] [--job-seconds 3] [--poll-interval 5] [--windows 2.5]
                                 [--signal-lead 30] [--skip-utilisation] [--wait-idle 1800]

Needs a cluster (``sudo deploy/slurm-local/up.sh``) that nothing else uses: numbers taken while
other jobs compete for the node are worthless, so the bench waits (up to ``--wait-idle`` seconds)
until ``squeue`` lists no job, records every foreign job it sees while it runs, and records the
load average before and after. Prints both figures per mode and writes
``bench/results/resubmit_gap.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.scheduler.base import JobSpec
from controller.scheduler.slurm import SlurmScheduler
from shared.schemas import ResourcesSpec

RESULTS = Path(__file__).parent / "results" / "resubmit_gap.json"
BENCH_PREFIX = "pyrecover-bench-"
"""Every job this bench submits has a name starting so (the utilisation runs' attempts are named
``pyrecover-r<run>-a<n>`` by the controller and are recognised by their run ids)."""

_JOB = (
    "import sys, time, pathlib\n"
    "d = pathlib.Path(sys.argv[1])\n"
    "(d / 'start').write_text(repr(time.time()))\n"
    "time.sleep(float(sys.argv[2]))\n"
    "(d / 'end').write_text(repr(time.time()))\n"
)


def _spec(root: Path, mode: str, index: int, seconds: float, dependency: str | None) -> JobSpec:
    jobdir = root / mode / f"job-{index:03d}"
    jobdir.mkdir(parents=True)
    return JobSpec(
        run_id=0,
        run_name=f"bench-{mode}",
        attempt=index + 1,
        job_name=f"pyrecover-bench-{mode}-{index}",
        argv=[sys.executable, "-c", _JOB, str(jobdir), str(seconds)],
        env={},
        resources=ResourcesSpec(scheduler="slurm", time_limit="5", signal_lead_seconds=0),
        workdir=jobdir,
        stdout=jobdir / "job.out",
        stderr=jobdir / "job.err",
        dependency=dependency,
    )


def _wait(sched: SlurmScheduler, job_id: str, *, started: bool, interval: float, limit: float = 300) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        st = sched.poll([job_id])[job_id]
        if st.state.finished or (started and st.state.value == "RUNNING"):
            return
        time.sleep(interval)
    raise RuntimeError(f"job {job_id} did not progress within {limit} s")


def run_chain(
    sched: SlurmScheduler, root: Path, mode: str, jobs: int, seconds: float, poll: float
) -> list[float]:
    """Run ``jobs`` chained jobs in ``mode``; return the gaps between consecutive jobs (seconds)."""
    prev: str | None = None
    rng = random.Random(0)
    for i in range(jobs):
        if mode == "prequeue":
            job = sched.submit(_spec(root, mode, i, seconds, prev))
            # Queue the successor while this one runs, as the reconciler does on "stopping".
            _wait(sched, job, started=True, interval=0.2)
        else:
            if prev is not None:
                # A controller's poll is not phase-locked to the job's end: start at a random phase.
                time.sleep(rng.uniform(0, poll))
                _wait(sched, prev, started=False, interval=poll)
            job = sched.submit(_spec(root, mode, i, seconds, None))
        prev = job
    assert prev is not None
    _wait(sched, prev, started=False, interval=0.2)
    times = []
    for i in range(jobs):
        d = root / mode / f"job-{i:03d}"
        times.append((float((d / "start").read_text()), float((d / "end").read_text())))
    return [times[i + 1][0] - times[i][1] for i in range(jobs - 1)]


# ------------------------------------------------------------------------------ an idle cluster
class Cluster:
    """Watches ``squeue`` for jobs that are not this bench's, before and while it measures."""

    def __init__(self) -> None:
        self.foreign: set[str] = set()
        self.own_runs: set[int] = set()
        self.max_load = os.getloadavg()[0]

    def jobs(self) -> list[tuple[str, str]]:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]  # type: ignore[misc]

    def _ours(self, name: str) -> bool:
        if name.startswith(BENCH_PREFIX):
            return True
        return any(name.startswith(f"pyrecover-r{run}-a") for run in self.own_runs)

    def note(self) -> None:
        """Remember every job that is not ours (the results say the cluster was shared), and the load."""
        self.max_load = max(self.max_load, os.getloadavg()[0])
        for job_id, name in self.jobs():
            if not self._ours(name):
                self.foreign.add(f"{job_id} {name}")

    def wait_idle(self, limit_s: float) -> float:
        """Block until squeue lists no job at all; returns the seconds waited (SystemExit after limit)."""
        started = time.monotonic()
        while jobs := self.jobs():
            waited = time.monotonic() - started
            if waited > limit_s:
                raise SystemExit(
                    f"the cluster is still busy after {waited:.0f} s ({len(jobs)} jobs, e.g. {jobs[:3]}): "
                    "numbers under contention are worthless; try again later or raise --wait-idle"
                )
            print(f"  waiting for an idle cluster: {len(jobs)} job(s) queued, e.g. {jobs[0]}", flush=True)
            time.sleep(15)
        return time.monotonic() - started


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1m": one, "5m": five, "15m": fifteen, "cpus": float(os.cpu_count() or 1)}


# ------------------------------------------------------------------------------ walltime utilisation
WINDOW_S = 60  # --time=1: SLURM's smallest limit


def _iso_seconds(a: Any, b: Any) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(str(b)) - datetime.fromisoformat(str(a))).total_seconds()
    except (TypeError, ValueError):
        return None


def attempt_figures(job: dict[str, Any]) -> dict[str, Any]:
    """One attempt's utilisation from the controller's goodput accounting (``/runs/{id}/jobs``)."""
    allocated = float(job.get("allocated_s") or 0.0)
    productive = float(job.get("productive_committed_s") or 0.0)
    return {
        "attempt": job["number"],
        "job_id": job.get("external_id"),
        "end_reason": job.get("end_reason"),
        "steps": [job.get("step_at_start"), job.get("step_at_end")],
        "allocated_s": allocated,
        "productive_committed_s": productive,
        "startup_s": float(job.get("startup_s") or 0.0),
        "checkpoint_load_s": float(job.get("checkpoint_load_s") or 0.0),
        "lost_work_s": float(job.get("lost_work_s") or 0.0),
        "utilisation": productive / allocated if allocated > 0 else None,
        # The job may end well before its limit (the worker's stop reserve): what that leaves unused.
        "utilisation_of_time_limit": productive / WINDOW_S,
    }


def utilisation_runs(
    cluster: Cluster, work: Path, windows: float, modes: list[tuple[str, bool, int]]
) -> dict[str, dict[str, Any]]:
    """One controller; one run per (name, pre-queue, signal lead), one after the other; figures per
    attempt and per run."""
    from controller.cli.client import Api, items
    from controller.demo import (
        WORKER_ENV,
        DemoController,
        calibrate,
        demo_settings,
        pick_port,
        plan_steps,
        training_body,
        worker_stop_overhead,
    )
    from worker.data.prepare import ensure_sample_data

    dataset, tokenizer = (p.absolute() for p in ensure_sample_data(work / "sample"))
    cal = calibrate(dataset, tokenizer, work)
    steps = plan_steps(cal, WINDOW_S, worker_stop_overhead(), windows=windows)
    print(
        f"  calibration: {cal.step_time * 1000:.0f} ms/step, start-up {cal.startup:.1f} s "
        f"→ {steps} steps per run (≈ {windows:g} windows of {WINDOW_S} s)",
        flush=True,
    )
    ctl = DemoController(demo_settings(work / "controller", pick_port(0), roots=[work]))
    ctl.start()
    api = Api(url=ctl.url, token=ctl.demo_token(), timeout=60)  # auth is on, as in every controller
    out: dict[str, dict[str, Any]] = {}
    try:
        for mode, prequeue, lead in modes:
            body = {
                "name": f"bench-utilisation-{mode}",
                "training": training_body(dataset, tokenizer, steps, str(work / "ckpt")),
                "resources": {
                    "scheduler": "slurm",
                    "time_limit": "1",
                    "signal_lead_seconds": lead,
                    "env": WORKER_ENV,
                },
                "policy": {
                    "max_attempts": 12,
                    "backoff_seconds": 1,
                    "prequeue_successor": prequeue,
                },
            }
            run_id = int(api.post("/runs", body)["id"])
            cluster.own_runs.add(run_id)
            started, limit = time.monotonic(), WINDOW_S * (windows + 3) * 2
            while (detail := api.get(f"/runs/{run_id}"))["state"] not in ("COMPLETED", "FAILED", "CANCELLED"):
                if time.monotonic() - started > limit:
                    api.post(f"/runs/{run_id}/cancel")
                    raise SystemExit(f"run {run_id} ({mode}) did not end within {limit:.0f} s")
                cluster.note()
                time.sleep(2)
            jobs = items(api.get(f"/runs/{run_id}/jobs"))
            # A pre-queued successor cancelled because the run finished never ran: not an attempt.
            ran = [j for j in jobs if float(j.get("allocated_s") or 0) > 0]
            attempts = [attempt_figures(j) for j in ran]
            full = [a for a in attempts if a["end_reason"] == "deadline_stop"]
            gaps = [
                g
                for prev, nxt in itertools.pairwise(ran)
                if (g := _iso_seconds(prev.get("end_time"), nxt.get("start_time"))) is not None
            ]
            allocated = sum(a["allocated_s"] for a in attempts)
            productive = sum(a["productive_committed_s"] for a in attempts)
            before_last = attempts[:-1]
            out[mode] = {
                "prequeue": prequeue,
                "signal_lead_seconds": lead,
                "run_state": detail["state"],
                "steps": steps,
                "wall_s": time.monotonic() - started,
                "attempts": attempts,
                "median_utilisation_full_window": (
                    statistics.median(a["utilisation"] for a in full) if full else None
                ),
                "median_utilisation_of_time_limit_full_window": (
                    statistics.median(a["utilisation_of_time_limit"] for a in full) if full else None
                ),
                "run_utilisation": productive / allocated if allocated > 0 else None,
                "run_goodput_api": detail.get("goodput"),
                "timeouts": sum(1 for a in attempts if a["end_reason"] == "timeout_killed"),
                "all_but_last_deadline_stop": all(a["end_reason"] == "deadline_stop" for a in before_last),
                "min_utilisation_all_but_last": (
                    min(a["utilisation"] or 0.0 for a in before_last) if before_last else None
                ),
                "attempt_gaps_s": gaps,
                "median_attempt_gap_s": statistics.median(gaps) if gaps else None,
            }
    finally:
        ctl.stop()
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--job-seconds", type=float, default=3.0)
    ap.add_argument("--poll-interval", type=float, default=5.0)
    ap.add_argument("--windows", type=float, default=2.5, help="walltime windows each utilisation run needs")
    ap.add_argument(
        "--signal-lead", type=int, default=30, help="seconds of SLURM's --signal for the signal run"
    )
    ap.add_argument("--skip-utilisation", action="store_true", help="only the gap (a few minutes less)")
    ap.add_argument("--wait-idle", type=float, default=1800, help="seconds to wait for an idle cluster")
    args = ap.parse_args()
    cluster = Cluster()
    waited = cluster.wait_idle(args.wait_idle)
    load_before = load()
    print(f"cluster idle (waited {waited:.0f} s); load average {load_before['1m']:.2f} on "
          f"{load_before['cpus']:.0f} CPUs", flush=True)  # fmt: skip
    sched = SlurmScheduler()
    results: dict[str, dict[str, Any]] = {}
    utilisation: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=BENCH_PREFIX) as tmp:
        for mode in ("poll", "prequeue"):
            gaps = run_chain(sched, Path(tmp), mode, args.jobs, args.job_seconds, args.poll_interval)
            cluster.note()
            results[mode] = {"median_s": statistics.median(gaps), "max_s": max(gaps), "gaps_s": gaps}
        if not args.skip_utilisation:
            modes = [
                (f"prequeue-signal{args.signal_lead}", True, args.signal_lead),
                ("prequeue", True, 0),
                ("poll", False, 0),
            ]
            utilisation = utilisation_runs(cluster, Path(tmp), args.windows, modes)
    load_after = load()
    print(f"resubmission gap over {args.jobs - 1} transitions (poll interval {args.poll_interval:g} s)")
    for mode, r in results.items():
        print(f"  {mode:9s} median {r['median_s']:6.2f} s   max {r['max_s']:6.2f} s")
    ratio = float(results["poll"]["median_s"]) / max(float(results["prequeue"]["median_s"]), 1e-9)
    print(f"  pre-queue shortens the median gap {ratio:.1f}x")
    if utilisation:
        print(f"walltime utilisation (committed-checkpoint time / allocated time), {WINDOW_S} s attempts")
        for mode, u in utilisation.items():
            per_job = ", ".join(
                f"a{a['attempt']} {_fmt(a['utilisation'], '.0%')} ({a['end_reason']})" for a in u["attempts"]
            )
            print(
                f"  {mode:17s} run {_fmt(u['run_utilisation'], '.1%')}  full windows (median) "
                f"{_fmt(u['median_utilisation_full_window'], '.1%')} of allocated, "
                f"{_fmt(u['median_utilisation_of_time_limit_full_window'], '.1%')} of the limit  "
                f"attempt gap (median) "
                f"{_fmt(u['median_attempt_gap_s'], '.1f')} s  [{per_job}]  {u['run_state']}"
            )
            print(
                f"  {'':17s} every attempt but the last deadline_stop: {u['all_but_last_deadline_stop']}; "
                f"lowest utilisation among them {_fmt(u['min_utilisation_all_but_last'], '.0%')}"
            )
    print(f"load average {load_before['1m']:.2f} before, {load_after['1m']:.2f} after, "
          f"{cluster.max_load:.2f} at most ({load_before['cpus']:.0f} CPUs); "
          f"foreign jobs seen: {len(cluster.foreign)}")  # fmt: skip
    if cluster.foreign:
        print(f"  WARNING: the cluster was shared ({sorted(cluster.foreign)[:5]}): numbers are suspect")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "args": vars(args),
                "results": results,
                "ratio": ratio,
                "utilisation": utilisation,
                "load_average": {"before": load_before, "after": load_after, "max_1m": cluster.max_load},
                "cluster": {"waited_for_idle_s": waited, "foreign_jobs_seen": sorted(cluster.foreign)},
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
