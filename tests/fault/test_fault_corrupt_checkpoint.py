"""Corrupted checkpoints between attempts: detected, the previous one is used, the event is on the run.

One run on a real controller and the ``local`` backend. For each kind of damage the driver waits
until the live attempt has committed two checkpoints, ``kill -9``s its worker (so nothing writes
any more), damages the newest checkpoint and lets the reconciler start the next attempt. That
attempt must resume from the previous committed checkpoint, and the run's event log (``GET
/runs/{id}/events``) must carry the worker's warning naming the damaged one. At the end the run
completes with weights bit-identical to an uninterrupted reference: nothing but recomputation lost.

Kinds: a flipped byte in a shard, a truncated shard, a deleted manifest, a manifest with forged
checksums, and a forged manifest that leaves a (damaged) shard out so that no checksum covers it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chaos import Deadline, RunDirWatch, chaos_rng, compare_checkpoints, record, trials
from ctlrun import (
    assert_chain_sound,
    attempts,
    events,
    exit_code,
    job_running,
    kill_worker,
    local_jobs,
    make_controller,
    reference,
    submit,
    training,
    wait_terminal,
)
from local_harness import kill_leftover_workers

from shared.paths import MANIFEST_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _largest(d: Path) -> Path:
    return max((p for p in d.iterdir() if p.name != MANIFEST_NAME), key=lambda p: p.stat().st_size)


def flip_byte(d: Path, rng: Any) -> None:
    shard = _largest(d)
    offset = rng.randrange(shard.stat().st_size)
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ (1 << rng.randrange(8))]))


def truncate_shard(d: Path, rng: Any) -> None:
    shard = _largest(d)
    os.truncate(shard, rng.randrange(shard.stat().st_size))


def delete_manifest(d: Path, rng: Any) -> None:
    (d / MANIFEST_NAME).unlink()


def forge_checksums(d: Path, rng: Any) -> None:
    """Damage a shard and rewrite the manifest's size for it, with a made-up checksum."""
    shard = _largest(d)
    os.truncate(shard, shard.stat().st_size // 2)
    man = json.loads((d / MANIFEST_NAME).read_text())
    entry = man["files"][shard.name]
    entry["size"] = shard.stat().st_size
    entry["checksum"] = f"{rng.getrandbits(32):08x}"
    (d / MANIFEST_NAME).write_text(json.dumps(man))


def forge_unlisted_shard(d: Path, rng: Any) -> None:
    """Damage a shard and drop it from the manifest: every checksum that is left still matches."""
    shard = _largest(d)
    flip_byte(d, rng)
    man = json.loads((d / MANIFEST_NAME).read_text())
    del man["files"][shard.name]
    (d / MANIFEST_NAME).write_text(json.dumps(man))


KINDS: dict[str, Callable[[Path, Any], None]] = {
    "flipped byte": flip_byte,
    "truncated shard": truncate_shard,
    "missing manifest": delete_manifest,
    "forged manifest (checksums)": forge_checksums,
    "forged manifest (shard left out)": forge_unlisted_shard,
}


def _kill_after_two_commits(ctl: Any, watch: RunDirWatch, bound: Deadline, seen: set[str]) -> dict[str, Any]:
    """Wait for the next attempt to commit two checkpoints of its own, then SIGKILL its worker."""

    def live_job() -> dict[str, Any] | None:
        fresh = [r for r in local_jobs(ctl) if r["job_id"] not in seen and r.get("pids")]
        return fresh[-1] if fresh else None

    job: dict[str, Any] = bound.wait_for(live_job, "the next attempt to start")
    seen.add(job["job_id"])
    start = watch.latest()
    bound.wait_for(
        lambda: len([c for c in watch.committed() if c > start]) >= 2 or not job_running(ctl, job),
        f"attempt {job['attempt']} to commit two checkpoints",
    )
    kill_worker(job)
    code = bound.wait_for(lambda: exit_code(ctl, job), "the shim to record the exit code")
    assert code == "137", f"attempt {job['attempt']} ended on its own (exit {code}) before the kill"
    return job


def test_corrupted_newest_checkpoint_falls_back_and_is_visible(
    sample: tuple[Path, Path], zygote: Any, tmp_path: Path
) -> None:
    rounds = trials(1, 1 / 30)
    plan = [kind for _ in range(rounds) for kind in KINDS]
    rng = chaos_rng("corrupt-checkpoint")
    rng.shuffle(plan)
    steps = 16 * len(plan) + 40
    bound = Deadline(150 + 25 * len(plan), "corrupted checkpoints")
    started = time.monotonic()
    body = training(sample, steps, tmp_path / "ckpt", checkpoint_frequency=4, keep_last_k=3)
    ctl = make_controller(tmp_path / "controller")
    ctl.start()
    outcomes: list[dict[str, Any]] = []
    try:
        run_id = submit(
            ctl,
            "corrupt",
            body,
            time_limit="900s",
            policy={"max_attempts": len(plan) + 10, "max_failures_without_progress": len(plan) + 2},
        )
        watch = RunDirWatch(tmp_path / "ckpt" / "corrupt")
        seen: set[str] = set()
        for kind in plan:
            job = _kill_after_two_commits(ctl, watch, bound, seen)
            committed = watch.committed()
            newest, previous = committed[-1], committed[-2]
            KINDS[kind](watch.run_dir / f"step-{newest}", rng)
            outcomes.append({"kind": kind, "damaged": newest, "expected": previous, "after": job["attempt"]})

        run = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        assert run["state"] == "COMPLETED", (run, jobs)
        assert_chain_sound(ctl, jobs)
        log = events(ctl, run_id)
        warnings = [e for e in log if str(e["kind"]).startswith("warning:checkpoint")]
        by_number = {int(j["number"]): j for j in jobs}
        detected = 0
        for outcome in outcomes:
            nxt = by_number[int(outcome["after"]) + 1]
            used = nxt.get("resumed_from") or ""
            assert used.endswith(f"step-{outcome['expected']}"), (outcome, nxt)
            named = [w for w in warnings if f"step-{outcome['damaged']}" in w["message"]]
            assert named, f"no warning on the run for {outcome}: {[w['message'] for w in warnings]}"
            outcome["event"] = named[0]["message"][:200]
            detected += 1
        ref = reference(zygote, body, "corrupt", tmp_path / "ref", bound)
        cmp = compare_checkpoints(tmp_path / "ckpt" / "corrupt" / f"step-{steps}", ref)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    finally:
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)
    print(f"[chaos] {json.dumps(outcomes)}")
    kinds = sorted({o["kind"] for o in outcomes})
    record(
        "corrupted checkpoint (" + ", ".join(kinds) + ")",
        path="controller + local backend, damage between attempts",
        trials=len(outcomes),
        survived=detected,
        data_lost="none: previous checkpoint used, final weights bit-identical",
        seconds=round(time.monotonic() - started, 1),
    )
