"""The worker leaves promptly after its final checkpoint: a SLURM time limit must not catch the exit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from train_launch import fake_squeue, run_worker, tiny_args, wait_for_step

from worker.distributed import DistInfo
from worker.shutdown import barrier_bounded, run_bounded, teardown

# A correctness bound, not a benchmark: the exit after the commit measured ~0.1 s here, whereas
# CPython's finalization alone (what the worker skips) took 3-7 s on this 2-core machine.
EXIT_BOUND_S = 5.0


def test_two_rank_deadline_stop_exits_within_seconds_of_the_final_commit(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PYRECOVER_DEADLINE", "SLURM_JOB_END_TIME", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    env, answer = fake_squeue(tmp_path)
    ckpt = tmp_path / "ckpt"
    # Async periodic saves: their background group and threads must be torn down as well.
    args = [
        *tiny_args(sample_data, ckpt, "quick", steps=100_000, fmt="dcp"),
        *("--async-checkpoint", "--checkpoint-frequency", "4"),
        *("--deadline-refresh-seconds", "0", "--deadline-margin", "0"),
    ]

    def cut_time_limit(procs: list) -> None:  # type: ignore[type-arg]
        assert wait_for_step(ckpt / "quick" / "loss.csv", 10, procs), "the workers ended early"
        answer.write_text(datetime.fromtimestamp(time.time() - 60).isoformat(timespec="seconds") + "\n")

    result = run_worker(args, world_size=2, env=env, while_running=cut_time_limit, timestamps=True)
    assert result.ok, result.explain()
    assert "(deadline): checkpoint committed at" in result.stderr[0]
    for rank in range(2):
        final = [t for t, line in result.lines[rank] if "committed (dcp, final)" in line]
        assert final, result.explain()
        lag = result.exited[rank] - final[-1]
        assert lag < EXIT_BOUND_S, f"rank {rank} exited {lag:.1f} s after its commit\n{result.explain()}"
        teardown_lines = [line for _, line in result.lines[rank] if "exit teardown:" in line]
        assert teardown_lines and "barrier" in teardown_lines[0], result.explain()
        assert "cut off" not in teardown_lines[0] and "skipped" not in teardown_lines[0]


def test_run_bounded_leaves_a_hung_step_behind() -> None:
    release = threading.Event()
    t = time.monotonic()
    assert run_bounded(release.wait, 0.2, name="hang") is False
    assert time.monotonic() - t < 2.0
    release.set()
    assert run_bounded(lambda: None, 1.0, name="quick") is True
    assert run_bounded(lambda: 1 / 0, 1.0, name="boom") is False  # an error is logged, not raised


class _HangingReporter:
    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self, timeout: float = 10.0) -> None:
        self.release.wait()


def test_teardown_is_bounded_by_the_allowance(caplog: pytest.LogCaptureFixture) -> None:
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    assert barrier_bounded(single, 0.1) is True
    reporter = _HangingReporter()
    t = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pyrecover.worker"):
        clean = teardown(single, reporter, allowance=1.0, agree=True)  # type: ignore[arg-type]
    reporter.release.set()
    assert clean is False
    assert time.monotonic() - t < 3.0
    assert "exit teardown: reporter" in caplog.text and "cut off" in caplog.text


def _run_python(code: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - t


def test_exit_now_runs_atexit_handlers_flushes_and_keeps_the_code() -> None:
    proc, _ = _run_python(
        """
        import atexit, sys
        atexit.register(print, "atexit ran")
        sys.stdout.write("buffered, not yet flushed")
        from worker.shutdown import exit_now
        exit_now(3)
        """
    )
    assert proc.returncode == 3, proc.stderr
    assert "buffered, not yet flushed" in proc.stdout and "atexit ran" in proc.stdout


def test_exit_now_does_not_wait_for_a_hung_atexit_handler() -> None:
    proc, elapsed = _run_python(
        """
        import atexit, time
        atexit.register(time.sleep, 60)
        from worker.shutdown import exit_now
        exit_now(0, grace=0.5)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 30
    assert "atexit handlers still running" in proc.stderr
