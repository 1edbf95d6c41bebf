"""Issue 3: an interrupted run (stop-after-steps, SIGUSR1, deadline) resumed 3 times ends bit-exact.

CPU, fp32, fixed seed: the final weights, the AdamW state and the per-step loss CSV of the
interrupted run must equal the uninterrupted run's exactly (torch.equal, byte-identical file).
"""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from train_launch import (
    fake_squeue,
    load_checkpoint,
    run_worker,
    signal_at_step,
    tensors_equal,
    tiny_args,
    wait_for_step,
)

STEPS = 60
STOP_RE = re.compile(r"stopped at step (\d+) \((\w+)\): checkpoint committed at .*resume with")


def stopped(stderr: str) -> tuple[int, str]:
    m = STOP_RE.search(stderr)
    assert m, stderr[-3000:]
    return int(m.group(1)), m.group(2)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("fmt", ["dcp", "vanilla"])
def test_interrupted_three_times_equals_uninterrupted(
    sample_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, world_size: int
) -> None:
    for var in ("PYRECOVER_DEADLINE", "SLURM_JOB_END_TIME", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    ckpt = tmp_path / "ckpt"

    def args(name: str, *extra: str) -> list[str]:
        return [*tiny_args(sample_data, ckpt, name, steps=STEPS, fmt=fmt), *extra]

    ref = run_worker(args("ref"), world_size=world_size)
    assert ref.ok, ref.explain()
    assert f"finished {STEPS} steps" in ref.stderr[0]

    csv = ckpt / "int" / "loss.csv"
    # 1. --stop-after-steps
    r1 = run_worker(args("int", "--stop-after-steps", "15"), world_size=world_size)
    assert r1.ok, r1.explain()
    assert stopped(r1.stderr[0]) == (15, "stop_after_steps")
    # 2. SIGUSR1 to the LAST rank only: the ranks must agree and all stop after the same step.
    r2 = run_worker(
        args("int"),
        world_size=world_size,
        while_running=signal_at_step(csv, 16, signal.SIGUSR1, world_size - 1),
    )
    assert r2.ok, r2.explain()
    s2, why2 = stopped(r2.stderr[0])
    assert why2 == "signal" and 15 < s2 < STEPS
    # 3. The deadline: squeue reports a far end, then (re-read every boundary) one in the past.
    env, answer = fake_squeue(tmp_path)

    def cut_time_limit(procs: list) -> None:  # type: ignore[type-arg]
        assert wait_for_step(csv, s2 + 1, procs)
        answer.write_text(datetime.fromtimestamp(time.time() - 60).isoformat(timespec="seconds") + "\n")

    r3 = run_worker(
        args("int", "--deadline-refresh-seconds", "0", "--deadline-margin", "0"),
        world_size=world_size,
        env=env,
        while_running=cut_time_limit,
    )
    assert r3.ok, r3.explain()
    s3, why3 = stopped(r3.stderr[0])
    assert why3 == "deadline" and s2 < s3 < STEPS
    # 4. Resume to the end.
    r4 = run_worker(args("int"), world_size=world_size)
    assert r4.ok, r4.explain()
    assert f"resumed from {ckpt / 'int' / f'step-{s3}'}" in r4.stderr[0]

    a = load_checkpoint(ckpt / "ref" / f"step-{STEPS}")
    b = load_checkpoint(ckpt / "int" / f"step-{STEPS}")
    assert tensors_equal(a["model"], b["model"])
    assert tensors_equal(a["optim"], b["optim"])
    assert (ckpt / "ref" / "loss.csv").read_bytes() == csv.read_bytes()
    assert len(csv.read_text().splitlines()) == STEPS + 1
