"""Disk full during a save: a run whose checkpoint directory is a small tmpfs (real ENOSPC).

The tmpfs holds two checkpoints and a half, so the third periodic save runs out of space
mid-write. Expected, per policy (``max_failures_without_progress=2``): the attempt fails with the
OS error on the run, the next attempts resume from the previous checkpoint (intact, verifiable,
loadable) and fail the same way without progress, and the run ends FAILED with a message that
says what to do. Doing it (a larger file system, then ``POST /runs/{id}/resume``) completes the
run with weights bit-identical to an uninterrupted reference.

Needs ``mount -t tmpfs`` (root); skipped where mounting is not permitted (a failure in CI).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos import REPO, Deadline, compare_checkpoints, record, worker_env
from ctlrun import (
    assert_chain_sound,
    attempts,
    events,
    make_controller,
    reference,
    submit,
    training,
    wait_terminal,
)
from local_harness import kill_leftover_workers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 40


def _mount(point: Path, size_bytes: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "small-fs"
    point.mkdir()
    probe = _mount(point, 1 << 20)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {probe.stderr.strip()}")
    subprocess.run(["umount", str(point)], check=True, timeout=30)
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from controller.cli import main; main()", "checkpoint", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=str(REPO),
        env=worker_env(),
    )


def test_disk_full_during_save_keeps_previous_checkpoint(
    sample: tuple[Path, Path], zygote: Any, small_fs: Path, tmp_path: Path
) -> None:
    bound = Deadline(420, "disk full during a save")
    started = time.monotonic()
    body = training(sample, STEPS, small_fs, checkpoint_frequency=5, keep_last_k=2, log_loss_to_csv=False)
    ref = reference(zygote, body, "full", tmp_path / "ref", bound)
    size = sum(p.stat().st_size for p in ref.iterdir())
    assert _mount(small_fs, int(2.5 * size)).returncode == 0
    ctl = make_controller(tmp_path / "controller")
    ctl.start()
    try:
        run_id = submit(
            ctl,
            "full",
            body,
            time_limit="900s",
            policy={"max_failures_without_progress": 2, "backoff_seconds": 0},
        )
        run = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        log = events(ctl, run_id)
        assert run["state"] == "FAILED", (run, jobs)
        # The previous checkpoints survived the failed save: committed, intact and loadable.
        kept = sorted(small_fs.glob("full/step-*"), key=lambda p: int(p.name.split("-")[1]))
        assert [p.name for p in kept] == ["step-5", "step-10"], kept
        for path in kept:
            check = _verify(path)
            assert check.returncode == 0, check.stdout + check.stderr
        assert all(j["end_reason"] == "failed" for j in jobs), jobs
        assert [j["step_at_end"] for j in jobs] == [10] * len(jobs), jobs
        # Visible on the run: every attempt's error, and the run's message says what to do.
        failed = [e["message"] for e in log if e["kind"] == "worker_failed"]
        assert len(failed) == len(jobs), log
        # The first failure is the save itself, whose OSError torch's writer turns into "unexpected
        # pos"; the next attempts fail on the full file system before training and name ENOSPC.
        assert any("No space left on device" in m for m in failed), failed
        assert "No space left on device" in (run["last_error"] or ""), run
        assert "free space" in run["last_error"] and "resume" in run["last_error"], run["last_error"]
        print(f"[chaos] run message: {run['last_error']}")
        print(f"[chaos] attempt errors: {failed}")
        first_fail = len(jobs)

        # Doing what the message says: room for the checkpoints, then resume.
        grow = subprocess.run(
            ["mount", "-o", f"remount,size={8 * size}", str(small_fs)], capture_output=True, text=True
        )
        assert grow.returncode == 0, grow.stderr
        ctl.api("POST", f"/runs/{run_id}/resume")
        run = wait_terminal(ctl, run_id, bound)
        jobs = attempts(ctl, run_id)
        assert run["state"] == "COMPLETED", (run, jobs)
        assert int(jobs[first_fail]["step_at_start"] or 0) == 10, jobs
        assert_chain_sound(ctl, jobs)
        cmp = compare_checkpoints(small_fs / "full" / f"step-{STEPS}", ref)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    finally:
        ctl.stop()
        kill_leftover_workers(ctl.data_dir)
    record(
        "disk full during a save (tmpfs, real ENOSPC)",
        path="controller + local backend; policy max_failures_without_progress=2",
        trials=1,
        survived=1,
        data_lost="none: step-5 and step-10 intact; FAILED with a what-to-do message; "
        "after freeing space + resume: COMPLETED, bit-identical",
        failed_attempts=first_fail,
        seconds=round(time.monotonic() - started, 1),
    )
