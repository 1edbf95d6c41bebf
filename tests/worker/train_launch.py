"""Helpers for tests that run real worker processes (1 or 2 ranks, gloo on 127.0.0.1, a free port)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.checkpoint.storage import load_plain
from worker.loss_log import read_losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_args(
    sample_data: tuple[Path, Path], ckpt_dir: Path, name: str, *, steps: int, fmt: str
) -> list[str]:
    parquet, tokenizer = sample_data
    return [
        "--dataset", str(parquet), "--tokenizer-name-or-path", str(tokenizer),
        "--model-preset", "tiny", "--sequence-length", "32", "--batch-size", "4",
        "--model-dtype", "fp32", "--seed", "7", "--learning-rate", "3e-3", "--lr-warmup-steps", "5",
        "--training-steps", str(steps), "--logging-frequency", "10", "--checkpoint-frequency", "10",
        "--checkpoint-dir", str(ckpt_dir), "--experiment-name", name, "--log-loss-to-csv",
        "--use-torch-distributed-ckpt" if fmt == "dcp" else "--no-use-torch-distributed-ckpt",
    ]  # fmt: skip


@dataclass
class Result:
    returncodes: list[int]
    stderr: list[str]
    lines: list[list[tuple[float, str]]] = field(default_factory=list)
    """With ``timestamps=True``: each rank's stderr lines with their arrival time (monotonic)."""
    exited: list[float] = field(default_factory=list)
    """With ``timestamps=True``: when each rank's process ended (monotonic)."""

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def explain(self) -> str:
        return "\n".join(
            f"--- rank {r} rc={rc}\n{err[-3000:]}"
            for r, (rc, err) in enumerate(zip(self.returncodes, self.stderr, strict=True))
        )


def run_worker(
    args: list[str],
    *,
    world_size: int,
    env: dict[str, str] | None = None,
    while_running: Callable[[list[subprocess.Popen[bytes]]], None] | None = None,
    timeout: float = 300.0,
    timestamps: bool = False,
) -> Result:
    """Start ``python -m worker ARGS`` once per rank, optionally act while they run, wait for all.

    ``timestamps=True`` reads stderr through pipes (one draining thread per rank, so a rank never
    blocks on a full pipe) and records when each line arrived and when each process ended.
    """
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="worker-logs-"))
    procs, logs = [], []
    lines: list[list[tuple[float, str]]] = [[] for _ in range(world_size)]
    exited = [0.0] * world_size
    threads: list[threading.Thread] = []
    for rank in range(world_size):
        penv = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        if "PYRECOVER_CONTROLLER_URL" not in (env or {}):  # report only where the test asks for it
            penv.pop("PYRECOVER_CONTROLLER_URL", None)
        if world_size > 1:
            penv |= {
                "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            }  # fmt: skip
        cmd = [sys.executable, "-m", "worker", *args]
        if timestamps:
            proc = subprocess.Popen(cmd, env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(proc)
            threads.append(threading.Thread(target=_drain, args=(proc, lines[rank]), daemon=True))
            threads.append(threading.Thread(target=_reap, args=(proc, exited, rank), daemon=True))
            continue
        # stderr goes to files: a full pipe of one rank would block it inside a collective.
        logs.append(log_dir / f"rank{rank}.err")
        with open(logs[-1], "w") as err:
            procs.append(subprocess.Popen(cmd, env=penv, stdout=subprocess.DEVNULL, stderr=err))
    for t in threads:
        t.start()
    hung = False
    try:
        if while_running is not None:
            while_running(procs)
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        hung = True  # reported below with every rank's log: a bare TimeoutExpired says nothing
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=10)
    if timestamps:
        errs = ["\n".join(text for _, text in rank_lines) for rank_lines in lines]
    else:
        errs = [log.read_text() for log in logs]
    shutil.rmtree(log_dir, ignore_errors=True)
    if hung:
        tails = "\n".join(f"--- rank {r}\n{err[-2000:]}" for r, err in enumerate(errs))
        raise AssertionError(f"worker ranks still running after {timeout:.0f} s (killed):\n{tails}")
    return Result(
        returncodes=[p.returncode for p in procs],
        stderr=errs,
        lines=lines if timestamps else [],
        exited=exited if timestamps else [],
    )


def _drain(proc: subprocess.Popen[bytes], out: list[tuple[float, str]]) -> None:
    assert proc.stderr is not None
    with proc.stderr:
        for raw in proc.stderr:
            out.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))


def _reap(proc: subprocess.Popen[bytes], exited: list[float], rank: int) -> None:
    proc.wait()
    exited[rank] = time.monotonic()


def wait_for_step(csv: Path, step: int, procs: list[subprocess.Popen[bytes]], timeout: float = 240.0) -> bool:
    """Poll the loss CSV until it has a row for ``step`` (False if the workers ended first)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if csv.exists() and max(read_losses(csv), default=0) >= step:
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.02)
    return False


def signal_at_step(
    csv: Path, step: int, sig: signal.Signals, rank: int
) -> Callable[[list[subprocess.Popen[bytes]]], None]:
    def act(procs: list[subprocess.Popen[bytes]]) -> None:
        assert wait_for_step(csv, step, procs), "the workers ended before the signal could be sent"
        procs[rank].send_signal(sig)

    return act


def fake_squeue(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A ``squeue`` whose ``%e`` answer the test controls (an admin cutting the time limit)."""
    answer = tmp_path / "squeue.answer"
    answer.write_text("2099-01-01T00:00:00\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "squeue"
    script.write_text(f"#!/bin/sh\ncat {answer}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    return env, answer


def tensors_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(tensors_equal, a, b))
    return a == b


def load_checkpoint(path: Path) -> dict[str, object]:
    """The plain (wrapper-independent) content of a committed checkpoint directory."""
    return load_plain(path)
