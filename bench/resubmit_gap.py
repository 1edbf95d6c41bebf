"""Resubmission gap on a real SLURM cluster: poll-then-resubmit vs successor pre-queue.

The gap is the time from job N's last instruction to job N+1's first one, measured by the jobs
themselves (``time.time()`` written at their start and end, sub-second, unlike SLURM's 1-second
timestamps). Both modes run the same chain of short jobs through the real ``SlurmScheduler``:

* ``poll``: what a controller without pre-queue does: poll (batched ``squeue``) every
  ``--poll-interval`` seconds (starting at a random phase, as a reconcile loop would be), and
  submit job N+1 once job N has ended;
* ``prequeue``: job N+1 is submitted with ``--dependency=afterany:<N>`` while job N still runs (the
  controller does this when the worker reports ``stopping``), so SLURM starts it as soon as N ends.

    python bench/resubmit_gap.py [--jobs 6] [--job-seconds 3] [--poll-interval 1.0]

Needs a cluster (``sudo deploy/slurm-local/up.sh``). Prints median/max gaps per mode and their
ratio, and writes ``bench/results/resubmit_gap.json``. The walltime-utilisation figure needs the
whole chain (controller + worker) and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from controller.scheduler.base import JobSpec
from controller.scheduler.slurm import SlurmScheduler
from shared.schemas import ResourcesSpec

RESULTS = Path(__file__).parent / "results" / "resubmit_gap.json"

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--job-seconds", type=float, default=3.0)
    ap.add_argument("--poll-interval", type=float, default=1.0)
    args = ap.parse_args()
    sched = SlurmScheduler()
    results: dict[str, dict[str, float | list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-") as tmp:
        for mode in ("poll", "prequeue"):
            gaps = run_chain(sched, Path(tmp), mode, args.jobs, args.job_seconds, args.poll_interval)
            results[mode] = {"median_s": statistics.median(gaps), "max_s": max(gaps), "gaps_s": gaps}
    print(f"resubmission gap over {args.jobs - 1} transitions (poll interval {args.poll_interval:g} s)")
    for mode, r in results.items():
        print(f"  {mode:9s} median {r['median_s']:6.2f} s   max {r['max_s']:6.2f} s")
    ratio = float(results["poll"]["median_s"]) / max(float(results["prequeue"]["median_s"]), 1e-9)
    print(f"  pre-queue shortens the median gap {ratio:.1f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
