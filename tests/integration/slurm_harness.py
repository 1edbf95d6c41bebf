"""Runs on the real local SLURM cluster (``deploy/slurm-local/up.sh --nodes N``), driven through a
real controller's REST API: what the multi-node and preemption tests share.

The controller (API + reconciler, SQLite in a fresh data dir) runs in-process, as in
``test_slurm_e2e.py``. Runs use the tiny model in fp32 on CPU with 32-token sequences, so a step
takes milliseconds and a job's time goes to start-up; every wait is a bounded poll.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shared.schemas import TrainingSpec

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
USABLE = frozenset({"idle", "mixed", "allocated", "completing"})
WORKER_ENV = {"OMP_NUM_THREADS": "1"}  # one intra-op thread: more only fight over the 2 cores


def sh(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def usable_nodes() -> list[str]:
    """The nodes of partition ``debug`` that can take jobs now."""
    out = sh("sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T", timeout=15)
    return sorted(
        name for name, state in (line.split() for line in out.stdout.splitlines() if line.strip())
        if state in USABLE
    )  # fmt: skip


def require_nodes(n: int) -> list[str]:
    """The usable nodes, or a skip (a failure in CI) saying how to get ``n`` of them."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM CLI not installed: run deploy/slurm-local/up.sh --nodes 3")
    nodes = usable_nodes()
    if len(nodes) < n:
        pytest.skip(f"needs {n} usable SLURM nodes, found {nodes}: run deploy/slurm-local/up.sh --nodes 3")
    return nodes


def hostnames(nodelist: str) -> list[str]:
    """``vm-[1-2]`` → ``["vm-1", "vm-2"]`` (``scontrol show hostnames``)."""
    return sh("scontrol", "show", "hostnames", nodelist).stdout.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def training(sample: tuple[Path, Path], steps: int, checkpoint_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A run's ``training`` body: the tiny model, fp32, fixed seed, a metric every step."""
    body: dict[str, Any] = {
        "dataset": str(sample[0]),
        "tokenizer_name_or_path": str(sample[1]),
        "training_steps": steps,
        "model_preset": "tiny",
        "sequence_length": 32,
        "batch_size": 4,
        "model_dtype": "fp32",
        "seed": 7,
        "learning_rate": 3e-3,
        "lr_warmup_steps": 5,
        "logging_frequency": 1,
        "checkpoint_dir": str(checkpoint_dir),
        "checkpoint_frequency": max(5, steps // 4),
        "log_loss_to_csv": False,
    }
    return body | overrides


def to_unix(value: str | None) -> float | None:
    """An API timestamp (ISO 8601, UTC) → Unix seconds."""
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def assert_ledger_adds_up(run: dict[str, Any]) -> dict[str, float]:
    """The run's goodput ledger (``GET /runs/{id}``, ``goodput_detail.ledger``) for a run that is
    over: every category ≥ 0, nothing still "in progress", some productive time, and the categories
    add up to the run's own wall time (``finished_at − created_at``) within 1 %. Returns it."""
    detail = run["goodput_detail"]
    ledger = {k: float(v) for k, v in detail["ledger"].items()}
    created, finished = to_unix(run["created_at"]), to_unix(run["finished_at"])
    assert created is not None and finished is not None, run
    wall = finished - created
    assert all(v >= 0 for v in ledger.values()), ledger
    assert ledger.get("in_progress", 0.0) == 0.0 and ledger["productive"] > 0, ledger
    assert abs(sum(ledger.values()) - wall) <= 0.01 * wall, (sum(ledger.values()), wall, ledger)
    return ledger


def process_environ(pid: int) -> dict[str, str]:
    """``/proc/<pid>/environ`` as a dict (empty when the process is gone or not readable): how a
    test finds the worker process of a given SLURM job and rank."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


class Runs:
    """The REST API of one in-process controller, as the tests use it."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def submit(
        self, name: str, body: dict[str, Any], *, policy: dict[str, Any] | None = None, **resources: Any
    ) -> int:
        """Submit a run: ``resources`` and ``policy`` over the harness's defaults."""
        run = {
            "name": name,
            "training": body,
            "resources": {
                "scheduler": "slurm",
                # Longer than any run here: no walltime stop, so every attempt boundary is the test's.
                "time_limit": "10",
                "partition": "debug",
                "signal_lead_seconds": 0,
                "env": WORKER_ENV,
                **resources,
            },
            "policy": {"max_attempts": 4, "backoff_seconds": 1, **(policy or {})},
        }
        return int(self.api.post("/runs", run)["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.api.get(f"/runs/{run_id}"))

    def jobs(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.api.get(f"/runs/{run_id}/jobs")["items"])

    def metrics(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.api.get(f"/runs/{run_id}/metrics")["items"])

    def wait(self, run_ids: list[int], until: Callable[[dict[str, Any]], bool], limit: float) -> None:
        """Poll until ``until(run)`` holds for every run; fail with the attempt chains at ``limit``."""
        end = time.monotonic() + limit
        while True:
            runs = {run_id: self.run(run_id) for run_id in run_ids}
            if all(until(r) for r in runs.values()):
                return
            if time.monotonic() > end:
                chains = {run_id: (r.get("state"), self.jobs(run_id)) for run_id, r in runs.items()}
                pytest.fail(f"runs not there after {limit:.0f} s: {chains}")
            time.sleep(0.5)


@contextmanager
def controller(data_dir: Path, roots: Sequence[Path] = (), **settings: Any) -> Iterator[Runs]:
    """An in-process controller over ``data_dir`` whose runs may read and write under ``roots``
    (the sample data, the checkpoint directories: the run-field rules refuse paths elsewhere).

    ``settings``: admin settings over the demo's (``slurm_prologue=["export PYRECOVER_TEST_…=…"]``
    is how a test injects a fault into its jobs: the API refuses ``PYRECOVER_*`` in a run's env)."""
    from controller import demo
    from controller.cli.client import Api
    from controller.settings import Settings

    base = demo.demo_settings(data_dir, free_port(), roots=roots)
    chosen = Settings.model_validate(base.model_dump() | settings) if settings else base
    ctl = demo.DemoController(chosen)
    ctl.start()
    try:
        yield Runs(Api(url=ctl.url, token=ctl.demo_token()))  # auth is on, as in every controller
    finally:
        ctl.stop()


def terminal(run: dict[str, Any]) -> bool:
    return run.get("state") in TERMINAL


def start_reference(
    body: dict[str, Any], checkpoint_dir: Path, name: str, cwd: Path
) -> subprocess.Popen[str]:
    """The same training, standalone (no controller, no SLURM, one process), uninterrupted."""
    spec = TrainingSpec(**(body | {"checkpoint_dir": str(checkpoint_dir)}))
    argv = [sys.executable, "-m", "worker", *spec.to_worker_args(), "--experiment-name", name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")} | WORKER_ENV
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, f"the reference worker failed ({proc.returncode}): {err[-3000:]}"


def assert_same_weights(a: Path, b: Path) -> None:
    """Model weights and optimizer state bit-identical (``pyrecover checkpoint compare --optimizer``).

    Called through its ``main``: ``python -m worker.checkpoint.cli`` has no ``__main__`` block and
    would exit 0 without comparing anything, so an ``EQUAL`` line is required as well."""
    compare = "import sys; from worker.checkpoint.cli import main; sys.exit(main())"
    cmp = sh(sys.executable, "-c", compare, "compare", str(a), str(b), "--optimizer", timeout=300)
    assert cmp.returncode == 0 and "EQUAL" in cmp.stdout, f"{a} and {b} differ:\n{cmp.stdout}{cmp.stderr}"
