"""Worker ``kill -9`` at random instants: mid-step, during an async save, during the final save.

Standalone (``test_worker_kill_9_standalone_bit_identical``): ONE training run of the real worker
(tiny model, CPU, async DCP saves every 5 steps) that a driver kills with SIGKILL ``trials(30)``
times and restarts with ``--resume-from-checkpoint latest`` until it is done. Each trial picks a
phase at random and waits for it from outside the process:

* ``step``: the log shows the worker training step resume+r (r random); kill a random fraction
  of a step time later;
* ``async_save``: the temporary directory of the next periodic save appears; kill a random
  fraction of a measured save time later (landed = that step never got committed);
* ``final_save``: the attempt runs with ``--stop-after-steps k`` (k random), so it ends with a
  synchronous final save; kill while that save's temporary exists.

At the end the run's final weights and AdamW state must be bit-identical (torch.equal) to an
uninterrupted reference, no restart may ever have found a corrupt or uncommitted "latest", and
every restart must have resumed from the newest committed checkpoint.

Through the controller (``test_worker_kill_9_through_controller_local_backend``): the same kinds
of kill, fewer of them, on a run that a real controller drives on the ``local`` backend (the
final save there is the one after the API's "stop" action); the reconciler resubmits after each
kill and the run completes bit-identical to the reference.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chaos import (
    COMMIT_LINE,
    FALLBACK_MARKERS,
    STEP_LINE,
    Deadline,
    LogTail,
    RunDirWatch,
    chaos_rng,
    compare_checkpoints,
    record,
    tiny_worker_args,
    trials,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASES = ("step", "async_save", "final_save")
MAX_ADVANCE = 8  # a trial commits at most this many steps beyond its resume point
TOKENS_PER_STEP = 4 * 32


def _timings(log: Path) -> tuple[float, float]:
    """(step seconds, async save seconds): medians measured by the reference run."""
    step_times, save_times = [], []
    for line in log.read_text().splitlines():
        if (m := STEP_LINE.search(line)) and int(m.group(1)) > 3:
            tok_s = float(line.split("|")[4].split()[0])
            step_times.append(TOKENS_PER_STEP / max(tok_s, 1e-6))
        if (m := COMMIT_LINE.search(line)) and "async" in m.group(2):
            save_times.append(float(m.group(3)))
    assert step_times and save_times, f"no step or save timings in {log}"
    return statistics.median(step_times), statistics.median(save_times)


def _resumed_from(lines: list[str]) -> int | None:
    for line in lines:
        if "resumed from " in line and " at step " in line:
            return int(line.rsplit(" at step ", 1)[1].split()[0])
    return None


@dataclass
class Tally:
    kills: Counter[str] = field(default_factory=Counter)
    landed: Counter[str] = field(default_factory=Counter)
    recomputed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.kills.values())


@dataclass
class Standalone:
    """One standalone run that the trials kill and restart."""

    zygote: Any
    args: list[str]
    tmp: Path
    watch: RunDirWatch
    bound: Deadline
    step_s: float
    save_s: float
    attempts: int = 0

    def start(self, extra: list[str]) -> tuple[int, LogTail]:
        self.attempts += 1
        log = self.tmp / f"attempt-{self.attempts:03d}.log"
        return self.zygote.spawn(self.args + extra, env=worker_env(), cwd=self.tmp, log=log), LogTail(log)

    def trial(self, rng: random.Random, tally: Tally) -> None:
        """Start the worker, wait for a random phase, SIGKILL it there, and check where it resumed."""
        resume = self.watch.latest()
        phase = rng.choice(PHASES)
        extra: list[str] = []
        if phase == "async_save":
            target = (resume // 5 + 1) * 5  # the next periodic save
        else:
            target = resume + rng.randint(1, MAX_ADVANCE)
            if phase == "final_save":
                extra = ["--stop-after-steps", str(target - resume)]
        debris = set(self.watch.temporaries())  # left by earlier kills; removed after the next commit
        pid, tail = self.start(extra)

        def writing() -> set[Path]:
            return {p for p, s in self.watch.temporaries().items() if s == target and p not in debris}

        def reached() -> bool:
            if self.zygote.exit_code(pid) is not None:
                return True
            if phase == "step":
                return tail.caught_up(target)
            return bool(writing()) or target in self.watch.committed()

        self.bound.wait_for(reached, f"attempt {self.attempts} to reach its {phase} kill point", every=0.002)
        time.sleep(rng.uniform(0, self.step_s if phase == "step" else self.save_s))
        in_flight = writing()
        hit = self.zygote.kill(pid)
        code = self.zygote.wait(pid, 60)
        tail.poll()
        if not hit or code != -9:
            assert code == 0, f"attempt {self.attempts} failed on its own (exit {code}): {tail.lines[-30:]}"
            tally.history.append({"attempt": self.attempts, "phase": phase, "killed": False})
            return
        tally.kills[phase] += 1
        after = self.watch.latest()
        if phase == "step" or (in_flight and target not in self.watch.committed()):
            tally.landed[phase] += 1  # a save kill lands when its step never got committed
        tally.recomputed += max(0, tail.last_step() - after)
        assert _resumed_from(tail.lines) == (resume or None), (
            f"attempt {self.attempts} did not resume from the newest committed step {resume}"
        )
        tally.history.append(
            {"attempt": self.attempts, "phase": phase, "resume": resume, "target": target, "committed": after}
        )


def test_worker_kill_9_standalone_bit_identical(
    sample: tuple[Path, Path], zygote: Any, tmp_path: Path
) -> None:
    n = trials(30)
    rng = chaos_rng("worker-kill-standalone")
    steps = MAX_ADVANCE * n + 20
    bound = Deadline(150 + 8 * n, "worker kill -9 (standalone)")
    started = time.monotonic()
    common = {"async_checkpoint": True, "timeaware_checkpointing": False}
    ref_args = tiny_worker_args(*sample, tmp_path / "ref", "kill", steps=steps, **common)
    pid = zygote.spawn(ref_args, env=worker_env(), cwd=tmp_path, log=tmp_path / "ref.log")
    assert zygote.wait(pid, bound.left()) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    step_s, save_s = _timings(tmp_path / "ref.log")
    print(f"[chaos] measured: {step_s * 1000:.0f} ms/step, async save {save_s * 1000:.0f} ms")

    run = Standalone(
        zygote=zygote,
        args=tiny_worker_args(*sample, tmp_path / "ckpt", "kill", steps=steps, **common),
        tmp=tmp_path,
        watch=RunDirWatch(tmp_path / "ckpt" / "kill"),
        bound=bound,
        step_s=step_s,
        save_s=save_s,
    )
    tally = Tally()
    while tally.total < n:
        bound.check(f"trial {tally.total + 1}/{n}")
        assert run.watch.latest() < steps - MAX_ADVANCE, f"the run got too far for {n} trials"
        run.trial(rng, tally)
    pid, tail = run.start([])
    assert zygote.wait(pid, bound.left()) == 0, tail.path.read_text()[-3000:]
    assert f"finished {steps} steps" in tail.path.read_text()

    for path in sorted(tmp_path.glob("attempt-*.log")):
        text = path.read_text()
        assert not any(m in text for m in FALLBACK_MARKERS), f"a kill broke 'latest': {path}\n{text[-3000:]}"
    final = tmp_path / "ckpt" / "kill" / f"step-{steps}"
    cmp = compare_checkpoints(final, tmp_path / "ref" / "kill" / f"step-{steps}")
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    print(f"[chaos] {json.dumps(tally.history)}")
    record(
        "worker kill -9 (mid-step / async save / final save)",
        path="standalone worker, restarted with --resume-from-checkpoint latest",
        trials=tally.total,
        survived=tally.total,
        data_lost="none: final weights + AdamW state bit-identical; no committed checkpoint lost",
        kills=dict(tally.kills),
        landed_in_phase=dict(tally.landed),
        steps_recomputed=tally.recomputed,
        attempts=run.attempts,
        seconds=round(time.monotonic() - started, 1),
    )
    # Every phase must really have been hit, or the test proves less than it claims.
    for phase in PHASES:
        assert tally.landed[phase] >= 1, f"no kill landed in phase {phase}: {tally}"


@dataclass
class Managed:
    """A run on a real controller + the local backend whose workers the trials kill."""

    ctl: Any
    run_id: int
    watch: RunDirWatch
    bound: Deadline
    seen: set[str] = field(default_factory=set)

    def trial(self, rng: random.Random, tally: Tally) -> None:
        from ctlrun import attempt_log, exit_code, job_running, kill_worker, local_jobs, worker_pids

        def live_job() -> dict[str, Any] | None:
            fresh = [r for r in local_jobs(self.ctl) if r["job_id"] not in self.seen and r.get("pids")]
            return fresh[-1] if fresh else None

        job = self.bound.wait_for(live_job, "the next attempt to start")
        self.seen.add(job["job_id"])
        resume = self.watch.latest()  # what the new worker resumes from: nothing commits before it trains
        tail = LogTail(attempt_log(self.ctl, self.run_id, int(job["attempt"])))

        def training_or_gone() -> bool:
            return tail.caught_up(resume + 1) or not (worker_pids(job) or job_running(self.ctl, job))

        self.bound.wait_for(training_or_gone, "the worker to train", every=0.01)
        if not worker_pids(job):
            return
        debris = set(self.watch.temporaries())
        phase = rng.choice(PHASES)
        target = resume + rng.randint(1, MAX_ADVANCE)
        if phase == "final_save":
            # The API's "stop" action: a graceful stop ends with a synchronous final save, at a step
            # the periodic saves (every 5) never use, unless it falls on a multiple of 5.
            self.bound.wait_for(
                lambda: tail.caught_up(target) or not worker_pids(job), "training", every=0.01
            )
            self.ctl.api("POST", f"/runs/{self.run_id}/actions", json={"action": "stop"})

        def wanted(p: Path, s: int) -> bool:
            if p in debris or s <= resume:
                return False
            return s % 5 == 0 if phase == "async_save" else s % 5 != 0

        def reached() -> bool:
            if not worker_pids(job):
                return True
            if phase == "step":
                return tail.caught_up(target)
            return any(wanted(p, s) for p, s in self.watch.temporaries().items())

        self.bound.wait_for(reached, f"the {phase} kill point", every=0.002)
        time.sleep(rng.uniform(0, 0.1 if phase == "step" else 0.3))
        in_flight = [s for p, s in self.watch.temporaries().items() if wanted(p, s)]
        kill_worker(job)
        code = self.bound.wait_for(lambda: exit_code(self.ctl, job), "the shim to record the exit code")
        if code != str(128 + 9):
            return  # it ended on its own first (e.g. the stop fell on a periodic step)
        tally.kills[phase] += 1
        if phase == "step" or (in_flight and max(in_flight) not in self.watch.committed()):
            tally.landed[phase] += 1


def test_worker_kill_9_through_controller_local_backend(
    sample: tuple[Path, Path], zygote: Any, tmp_path: Path
) -> None:
    from ctlrun import (
        assert_chain_sound,
        attempts,
        make_controller,
        reference,
        submit,
        training,
        wait_terminal,
    )
    from local_harness import kill_leftover_workers

    n = trials(6, 0.2)
    rng = chaos_rng("worker-kill-controller")
    steps = MAX_ADVANCE * n + 40
    bound = Deadline(240 + 25 * n, "worker kill -9 (through the controller)")
    started = time.monotonic()
    body = training(sample, steps, tmp_path / "ckpt", async_checkpoint=True)
    ctl = make_controller(tmp_path / "controller")
    ctl.start()
    tally = Tally()
    try:
        run_id = submit(
            ctl,
            "wkill",
            body,
            time_limit="900s",  # no walltime stop: every attempt ends by a kill, a stop or finishing
            policy={"max_attempts": 3 * n + 5, "max_failures_without_progress": n + 2},
        )
        run = Managed(ctl=ctl, run_id=run_id, watch=RunDirWatch(tmp_path / "ckpt" / "wkill"), bound=bound)
        while tally.total < n:
            assert run.watch.latest() < steps - MAX_ADVANCE, f"the run got too far for {n} kills"
            run.trial(rng, tally)
        detail = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        assert detail["state"] == "COMPLETED", (detail, jobs)
        assert_chain_sound(ctl, jobs)
        assert sum(j["end_reason"] == "failed" for j in jobs) >= n, jobs
        final = tmp_path / "ckpt" / "wkill" / f"step-{steps}"
        ref = reference(zygote, body, "wkill", tmp_path / "ref", bound)
        cmp = compare_checkpoints(final, ref)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    finally:
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)
    record(
        "worker kill -9 (mid-step / async save / final save)",
        path="controller + local backend (reconciler resubmits)",
        trials=tally.total,
        survived=tally.total,
        data_lost="none: final weights + AdamW state bit-identical; no committed checkpoint lost",
        kills=dict(tally.kills),
        landed_in_phase=dict(tally.landed),
        attempts=len(jobs),
        seconds=round(time.monotonic() - started, 1),
    )
