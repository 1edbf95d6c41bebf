"""Hangs on the real SLURM cluster: detected, reported ``hung`` with their stacks, resubmitted, and
the run completes; a slow but healthy save is not a hang.

Three cases run at once (one node each at most, so the 3-node cluster takes them side by side), each
under its own in-process controller, because a fault hook reaches a SLURM job only through the
admin's ``slurm_prologue`` and that applies to every job of a controller:

1. **A frozen rank.** A 1 node x 2 rank run (gloo) whose rank 1 the test SIGSTOPs mid-training. Rank
   0 waits for it in a collective; its watchdog trips after ``max(hang_factor x p99 step,
   hang_floor_seconds)``, dumps every thread's stack into the attempt's log and reports ``hung``
   naming rank 1 as not running. The next attempt resumes from the last committed checkpoint and the
   final weights are bit-identical to the same training uninterrupted (submitted beside it).
2. **A stalled data read** (``PYRECOVER_TEST_STALL_DATA``, attempt 1 only): ``hung`` in the step,
   the rank named as stuck reading data; the clean attempt 2 completes the run.
3. **A slow save** (``PYRECOVER_TEST_SLOW_SAVE``): every save takes well over ten steps and longer
   than the hang floor, so a watchdog that judged a save by the step limit would trip; the run must
   complete in one attempt with no ``hung`` or heartbeat-timeout event.

Prints each case's detection latency and time back to training, and appends one row per case to
``$PYRECOVER_CHAOS_RESULTS`` (``tests/fault/chaos.record``). Skipped without a cluster; a failure
in CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from slurm_harness import (
    Runs,
    assert_ledger_adds_up,
    assert_same_weights,
    controller,
    process_environ,
    require_nodes,
    terminal,
    to_unix,
    training,
)

from shared.envvars import TEST_PREFIX
from tests.fault.chaos import record
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait, pytest.mark.chaos]

# Case 1. A step takes ~20-100 ms here: 600 steps leave time to freeze rank 1 well after the first
# committed checkpoint (every 50 steps) and well before the end.
FROZEN_STEPS = 600
FROZEN_EVERY = 50
FROZEN_FLOOR_S = 20.0
# Case 2: batch 130 stalls; checkpoints at 40, 80, 120 came before it.
STALL_STEPS = 200
STALL_EVERY = 40
STALL_BATCH = 130
STALL_FLOOR_S = 10.0
# Case 3: saves at 50, 100 and the final one at 150, each 12 s (>= 10 x a step, > the 8 s floor).
SLOW_STEPS = 150
SLOW_EVERY = 50
SLOW_SAVE_S = 12.0
SLOW_FLOOR_S = 8.0
# Past the limit: the watchdog's poll (<= 1 s), its wait for the peers to trip too (<= 15 s, in
# practice none: a frozen peer's heartbeat is stale by then) and the report's delivery.
SLACK_S = 10.0
WAIT_S = 420.0


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def _rank_process(job_id: str, rank: int) -> int | None:
    """The worker process of ``rank`` in SLURM job ``job_id`` (its environment says so)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = process_environ(pid)
        if env.get("SLURM_JOB_ID") != job_id or env.get("SLURM_PROCID") != str(rank):
            continue
        with contextlib.suppress(OSError):
            if "SLURM_STEP_ID" in env and b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    pos = 0.99 * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _step_p99(metrics: list[dict[str, Any]], attempt: int, checkpoint_every: int) -> float:
    """The p99 step time of ``attempt`` as its worker reported it, as the watchdog counts steps: its
    warm-up left out, and the step after each save (a metric's ``step_time`` is the time since the
    one before, so that one includes the save)."""
    times = [
        m["step_time"]
        for m in metrics
        if m["attempt"] == attempt and m["step_time"] is not None and (m["step"] - 1) % checkpoint_every
    ]
    assert len(times) > 3, f"attempt {attempt} reported {len(times)} step times"
    return _p99(times[3:])


def _first_step_time(metrics: list[dict[str, Any]], attempt: int) -> float:
    return min(to_unix(m["time"]) or 0.0 for m in metrics if m["attempt"] == attempt)


class Case:
    """One run under one controller, and everything the API says about it once it ended."""

    def __init__(self, runs: Runs, run_id: int, data_dir: Path) -> None:
        self.runs, self.id, self.data_dir = runs, run_id, data_dir
        self.run: dict[str, Any] = {}
        self.jobs: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []

    def ended(self) -> bool:
        return terminal(self.runs.run(self.id))

    def collect(self) -> None:
        api = self.runs.api
        self.run, self.jobs = self.runs.run(self.id), self.runs.jobs(self.id)
        self.metrics = self.runs.metrics(self.id)
        self.events = list(api.get(f"/runs/{self.id}/events", limit=1000)["items"])
        self.checkpoints = list(api.get(f"/runs/{self.id}/checkpoints")["items"])

    def hung_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] in ("hung", "heartbeat_timeout")]

    def log(self, attempt: int) -> str:
        logs = self.data_dir / "runs" / str(self.id) / "logs"
        return "".join(
            (logs / f"attempt-{attempt:04d}.{ext}").read_text(errors="replace")
            for ext in ("out", "err")
            if (logs / f"attempt-{attempt:04d}.{ext}").exists()
        )

    def seconds(self) -> float:
        """From the first submission to the end of the last attempt."""
        first = to_unix(self.jobs[0]["submit_time"]) or 0.0
        return (to_unix(self.jobs[-1]["end_time"]) or first) - first

    def last_checkpoint_of(self, attempt: int) -> int:
        steps = [c["step"] for c in self.checkpoints if c["attempt"] == attempt]
        assert steps, f"attempt {attempt} committed no checkpoint: {self.checkpoints}"
        return max(steps)


def _wait(cases: list[Case], limit: float) -> None:
    end = time.monotonic() + limit
    while not all(c.ended() for c in cases):
        if time.monotonic() > end:
            chains = {c.id: (c.runs.run(c.id).get("state"), c.runs.jobs(c.id)) for c in cases}
            pytest.fail(f"runs not ended after {limit:.0f} s: {chains}")
        time.sleep(1.0)


def _freeze_rank_1(case: Case) -> tuple[str, int, float, int]:
    """Wait until attempt 1 committed a checkpoint and trains on, then SIGSTOP its rank 1:
    (its job, its pid, when, the step reported just before)."""

    def ready(run: dict[str, Any]) -> bool:
        jobs = case.runs.jobs(case.id)
        if terminal(run) or any(j["end_reason"] for j in jobs):
            pytest.fail(f"attempt 1 ended before its rank was frozen: {run['state']} {jobs}")
        return (
            bool(jobs)
            and jobs[0]["state"] == "RUNNING"
            and run.get("latest_checkpoint_step") is not None
            and run["current_step"] < FROZEN_STEPS - 200
        )

    case.runs.wait([case.id], ready, limit=240)
    job = str(case.runs.jobs(case.id)[0]["external_id"])
    pid = _rank_process(job, 1)
    assert pid is not None, f"no rank-1 worker process of job {job} found in /proc"
    step = int(case.runs.run(case.id)["current_step"])
    os.kill(pid, signal.SIGSTOP)
    return job, pid, time.time(), step


def test_hangs_end_hung_and_resume_and_a_slow_save_is_not_a_hang(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    require_nodes(3)
    started = time.monotonic()
    roots = [tmp_path, sample[0].parent, sample[1].parent]
    ckpt = tmp_path / "ckpt"
    frozen_body = training(
        sample, FROZEN_STEPS, ckpt, checkpoint_frequency=FROZEN_EVERY, hang_floor_seconds=FROZEN_FLOOR_S
    )
    stall_hooks = [
        f"export {TEST_PREFIX}STALL_DATA={STALL_BATCH}:3600",
        f"export {TEST_PREFIX}HOOKS_ATTEMPT=1",  # attempt 2 runs clean
    ]
    slow_hooks = [f"export {TEST_PREFIX}SLOW_SAVE={SLOW_SAVE_S:g}"]
    frozen_job = ""
    frozen_pid: int | None = None
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(controller(tmp_path / "ctl-frozen", roots=roots))
        stalling = stack.enter_context(
            controller(tmp_path / "ctl-stall", roots=roots, slurm_prologue=stall_hooks)
        )
        saving = stack.enter_context(
            controller(tmp_path / "ctl-slow", roots=roots, slurm_prologue=slow_hooks)
        )
        frozen = Case(plain, plain.submit("frozen", frozen_body, ntasks_per_node=2), tmp_path / "ctl-frozen")
        stalled = Case(
            stalling,
            stalling.submit(
                "stalled",
                training(
                    sample,
                    STALL_STEPS,
                    ckpt,
                    checkpoint_frequency=STALL_EVERY,
                    hang_floor_seconds=STALL_FLOOR_S,
                ),
            ),
            tmp_path / "ctl-stall",
        )
        slow = Case(
            saving,
            saving.submit(
                "slowsave",
                training(
                    sample, SLOW_STEPS, ckpt, checkpoint_frequency=SLOW_EVERY, hang_floor_seconds=SLOW_FLOOR_S
                ),
            ),
            tmp_path / "ctl-slow",
        )
        reference = Case(
            plain,
            plain.submit(
                "reference", frozen_body | {"checkpoint_dir": str(tmp_path / "ref")}, ntasks_per_node=2
            ),
            tmp_path / "ctl-frozen",
        )
        cases = [frozen, stalled, slow, reference]
        try:
            frozen_job, frozen_pid, frozen_at, frozen_step = _freeze_rank_1(frozen)
            _wait(cases, WAIT_S)
        finally:
            # srun kills it once rank 0 exits; whatever happened, never leave it frozen (and never
            # signal a process that merely reused its pid).
            if frozen_pid is not None and _rank_process(frozen_job, 1) == frozen_pid:
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(frozen_pid, sig)
        for case in cases:
            case.collect()

    for case in cases:
        assert case.run["state"] == "COMPLETED", (case.run, case.jobs)
        assert_ledger_adds_up(case.run)
    results = [
        _check_frozen(frozen, reference, ckpt, tmp_path / "ref", frozen_at, frozen_step),
        _check_stalled(stalled),
        _check_slow(slow),
    ]
    for case, (fault, figures) in zip((frozen, stalled, slow), results, strict=True):
        record(
            fault,
            path="controller + real SLURM (1 node), worker watchdog",
            trials=1,
            survived=1,
            seconds=round(case.seconds(), 1),
            **figures,
        )
    print(f"test {time.monotonic() - started:.1f} s")


def _hung_event(case: Case) -> dict[str, Any]:
    hung = [e for e in case.events if e["kind"] == "hung"]
    assert len(hung) == 1, case.events
    return hung[0]


def _check_frozen(
    case: Case, reference: Case, ckpt: Path, ref_ckpt: Path, frozen_at: float, frozen_step: int
) -> tuple[str, dict[str, Any]]:
    assert [j["end_reason"] for j in case.jobs] == ["hung", "finished"], case.jobs
    assert [j["end_reason"] for j in reference.jobs] == ["finished"], reference.jobs
    hung = _hung_event(case)
    data = hung["data"]
    assert data["phase"] in ("step", "save") and data["rank"] == 0, hung
    frozen = [s for s in data["suspects"] if s["rank"] == 1]
    assert frozen and frozen[0]["reason"].startswith("not running"), hung
    # faulthandler's dump of every thread, in the attempt's own log.
    log = case.log(1)
    assert "most recent call first" in log and 'File "' in log, log[-3000:]
    assert "watchdog: no progress in" in log, log[-3000:]

    resumed = int(case.jobs[1]["step_at_start"])
    assert resumed == case.last_checkpoint_of(1) and 0 < resumed <= frozen_step, (case.jobs, case.checkpoints)
    final = f"step-{FROZEN_STEPS}"
    assert_same_weights(ckpt / "frozen" / final, ref_ckpt / "reference" / final)

    p99 = _step_p99(case.metrics, 1, FROZEN_EVERY)
    bound = max(3.0 * p99, FROZEN_FLOOR_S)
    detected = (to_unix(hung["time"]) or 0.0) - frozen_at
    ended = (to_unix(case.jobs[0]["end_time"]) or 0.0) - frozen_at
    next_start = (to_unix(case.jobs[1]["start_time"]) or 0.0) - frozen_at
    training_again = _first_step_time(case.metrics, 2) - frozen_at
    print(
        f"\nfrozen rank 1 at step ~{frozen_step}: hung in {data['phase']} "
        f"(limit {data['limit_seconds']:.1f} s, p99 step {p99 * 1000:.0f} ms); "
        f"detected {detected:.1f} s (bound {bound:.0f} + {SLACK_S:.0f} s), "
        f"attempt ended {ended:.1f} s, next job started {next_start:.1f} s (its node excluded), resumed "
        f"from step {resumed}, training again {training_again:.1f} s"
    )
    assert 0 < detected <= bound + SLACK_S, (detected, bound, hung)
    return "rank SIGSTOPped mid-step (2 ranks, gloo)", {
        "detection_s": round(detected, 1),
        "limit_s": round(bound, 1),
        "next_job_started_s": round(next_start, 1),
        "training_again_s": round(training_again, 1),
        "data_lost": "none: resumed from the last committed checkpoint, final weights bit-identical",
    }


def _check_stalled(case: Case) -> tuple[str, dict[str, Any]]:
    assert [j["end_reason"] for j in case.jobs] == ["hung", "finished"], case.jobs
    hung = _hung_event(case)
    data = hung["data"]
    assert data["phase"] == "step", hung
    assert any(s["reason"] == "stuck reading data" for s in data["suspects"]), hung
    log = case.log(1)
    assert "test hook: stalling the read of batch" in log and "most recent call first" in log, log[-3000:]
    resumed = int(case.jobs[1]["step_at_start"])
    assert resumed == case.last_checkpoint_of(1) and resumed < STALL_BATCH, (case.jobs, case.checkpoints)

    # The stall begins right after the last step attempt 1 reported (a metric every step).
    stalled_at = max(to_unix(m["time"]) or 0.0 for m in case.metrics if m["attempt"] == 1)
    p99 = _step_p99(case.metrics, 1, STALL_EVERY)
    bound = max(3.0 * p99, STALL_FLOOR_S)
    detected = (to_unix(hung["time"]) or 0.0) - stalled_at
    training_again = _first_step_time(case.metrics, 2) - stalled_at
    print(
        f"stalled read of batch {STALL_BATCH}: hung in {data['phase']} (limit {data['limit_seconds']:.1f} s, "
        f"p99 step {p99 * 1000:.0f} ms); detected {detected:.1f} s after the last step (bound {bound:.0f} + "
        f"{SLACK_S:.0f} s), resumed from step {resumed}, training again {training_again:.1f} s"
    )
    assert 0 < detected <= bound + SLACK_S, (detected, bound, hung)
    return "data read stalled (PYRECOVER_TEST_STALL_DATA)", {
        "detection_s": round(detected, 1),
        "limit_s": round(bound, 1),
        "training_again_s": round(training_again, 1),
        "data_lost": "none: resumed from the last committed checkpoint",
    }


def _check_slow(case: Case) -> tuple[str, dict[str, Any]]:
    assert [j["end_reason"] for j in case.jobs] == ["finished"], case.jobs
    assert case.hung_events() == [], case.hung_events()
    assert len(case.checkpoints) == SLOW_STEPS // SLOW_EVERY, case.checkpoints
    # The hook sleeps inside the save, before the checkpoint manager's own timing starts: the save
    # shows as the gap between a checkpoint's step and the next one.
    at = {m["step"]: to_unix(m["time"]) or 0.0 for m in case.metrics}
    saves = [at[s + 1] - at[s] for s in range(SLOW_EVERY, SLOW_STEPS, SLOW_EVERY)]
    assert min(saves) >= SLOW_SAVE_S, saves
    p99 = _step_p99(case.metrics, 1, SLOW_EVERY)
    # Slow enough that the step's limit would have tripped on it: the save's own estimate must rule.
    step_limit = max(3.0 * p99, SLOW_FLOOR_S)
    assert 10 * p99 <= SLOW_SAVE_S and step_limit < SLOW_SAVE_S, (SLOW_SAVE_S, p99)
    print(
        f"slow saves: {len(saves)} periodic saves of {min(saves):.1f}-{max(saves):.1f} s "
        f"({SLOW_SAVE_S / p99:.0f}x the p99 step {p99 * 1000:.0f} ms; the step's limit would be "
        f"{step_limit:.0f} s): 1 attempt, no hung event"
    )
    return "slow healthy save (false-positive check)", {
        "save_s": round(min(saves), 1),
        "save_over_p99_step": round(SLOW_SAVE_S / p99, 1),
        "hung_events": 0,
        "data_lost": "none: 1 attempt, no false hang",
    }
