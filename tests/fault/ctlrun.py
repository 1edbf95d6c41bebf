"""Runs driven by a real controller process (``local_harness.Controller``), as the fault tests need them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from chaos import STEP_LINE, Deadline, tiny_worker_args, worker_env
from local_harness import Controller

from shared.schemas import TrainingSpec

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def make_controller(
    data_dir: Path, *, database_url: str | None = None, kill_wait_s: float = 5.0
) -> Controller:
    """A controller on a fresh data dir (SQLite there unless ``database_url``), migrated, with a token."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ctl = Controller(data_dir, kill_wait_s=kill_wait_s)
    ctl.env |= {"OMP_NUM_THREADS": "1"}
    if database_url:
        ctl.env["PYRECOVER_DATABASE_URL"] = database_url
    ctl.setup()
    return ctl


def training(sample: tuple[Path, Path], steps: int, checkpoint_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The fast fault-run configuration (tiny model, 32-token sequences, a metric every step)."""
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
        "checkpoint_frequency": 5,
        "keep_last_k": 2,
    }
    return body | overrides


def submit(
    ctl: Controller,
    name: str,
    body: dict[str, Any],
    *,
    time_limit: str,
    scheduler: str = "local",
    policy: dict[str, Any] | None = None,
    resources: dict[str, Any] | None = None,
) -> int:
    run = ctl.api(
        "POST",
        "/runs",
        json={
            "name": name,
            "training": body,
            "resources": {
                "scheduler": scheduler,
                "time_limit": time_limit,
                "signal_lead_seconds": 0,
                "env": {"OMP_NUM_THREADS": "1"},
                **(resources or {}),
            },
            "policy": {"max_attempts": 30, "max_failures_without_progress": 5, "backoff_seconds": 0}
            | (policy or {}),
        },
    )
    return int(run["id"])


def attempts(ctl: Controller, run_id: int) -> list[dict[str, Any]]:
    return sorted(ctl.items(f"/runs/{run_id}/jobs"), key=lambda j: int(j["number"]))


def events(ctl: Controller, run_id: int) -> list[dict[str, Any]]:
    return ctl.items(f"/runs/{run_id}/events")


def metric_steps(ctl: Controller, run_id: int) -> set[int]:
    page = ctl.api("GET", f"/runs/{run_id}/metrics", params={"limit": 100_000})
    return {int(m["step"]) for m in page["items"]}


def wait_terminal(ctl: Controller, run_id: int, bound: Deadline) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = ctl.api("GET", f"/runs/{run_id}")
        return run if run["state"] in TERMINAL else None

    return dict(bound.wait_for(done, f"run {run_id} to end", every=0.5))


def local_jobs(ctl: Controller) -> list[dict[str, Any]]:
    """Every job the local backend ever started (its state files), oldest first."""
    records = []
    for path in (ctl.data_dir / "local-jobs").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text()))
    return sorted(records, key=lambda r: float(r.get("submit_time", 0.0)))


def assert_chain_sound(ctl: Controller, jobs: list[dict[str, Any]]) -> None:
    """Attempt numbers 1..n without a gap, and no job submitted twice (by id or by job name)."""
    assert [j["number"] for j in jobs] == list(range(1, len(jobs) + 1)), jobs
    ids = [j["external_id"] for j in jobs]
    assert None not in ids and len(set(ids)) == len(ids), ids
    started = [r["job_name"] for r in local_jobs(ctl)]
    assert len(started) == len(set(started)) == len(jobs), f"jobs started: {started}; attempts: {jobs}"


def worker_pids(record: dict[str, Any]) -> list[int]:
    """The worker processes of a local job: the children of its per-rank ``sh`` shims."""
    pids = []
    for shim in record.get("pids", []):
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
            pids += [int(c) for c in children]
    return pids


def job_running(ctl: Controller, record: dict[str, Any]) -> bool:
    """Whether the local job has no result yet (its state file, read afresh)."""
    path = ctl.data_dir / "local-jobs" / f"{record['job_id']}.json"
    try:
        return json.loads(path.read_text()).get("result") is None
    except (OSError, ValueError):
        return True


def exit_code(ctl: Controller, record: dict[str, Any], rank: int = 0) -> str | None:
    """What the rank's shim recorded as the worker's exit status (137 = SIGKILL), once it has."""
    path = ctl.data_dir / "local-jobs" / f"{record['job_id']}.rank{rank}.exit"
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


def kill_worker(record: dict[str, Any]) -> bool:
    """SIGKILL the worker processes (not the shims, which record the exit: 137, like an OOM kill)."""
    hit = False
    for pid in worker_pids(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            hit = True
    return hit


def attempt_log(ctl: Controller, run_id: int, attempt: int) -> Path:
    return ctl.data_dir / "runs" / str(run_id) / "logs" / f"attempt-{attempt:04d}.err"


def reference(zygote: Any, body: dict[str, Any], name: str, ckpt_dir: Path, bound: Deadline) -> Path:
    """The same training, uninterrupted and standalone; returns its final checkpoint directory."""
    spec = TrainingSpec(**(body | {"checkpoint_dir": str(ckpt_dir)}))
    argv = [*spec.to_worker_args(), "--experiment-name", name]
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log = ckpt_dir / "reference.log"
    pid = zygote.spawn(argv, env=worker_env(), cwd=ckpt_dir, log=log)
    code = zygote.wait(pid, max(bound.left(), 60))
    assert code == 0, f"the reference run failed ({code}): {log.read_text()[-3000:]}"
    final = ckpt_dir / name / f"step-{spec.training_steps}"
    assert (final / "manifest.json").exists(), f"no final checkpoint in {final}"
    return final


class WorkerCensus:
    """Samples /proc: the most workers of this controller's runs ever alive at the same time."""

    def __init__(self, data_dir: Path) -> None:
        self.marker = f"{data_dir}/runs/".encode()
        self.max_alive = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def alive(self) -> int:
        count = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[1:3] == [b"-m", b"worker"]:
                    count += self.marker in Path(f"/proc/{pid}/environ").read_bytes()
        return count

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.max_alive = max(self.max_alive, self.alive())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def measure_step_seconds(zygote: Any, sample: tuple[Path, Path], tmp: Path) -> float:
    """Median step time of the fault configuration on this machine (a 30-step standalone run)."""
    args = tiny_worker_args(
        sample[0], sample[1], tmp, "calib", steps=30, checkpoint_frequency=-1, timeaware_checkpointing=False
    )
    log = tmp / "calib.log"
    tmp.mkdir(parents=True, exist_ok=True)
    pid = zygote.spawn(args, env=worker_env(), cwd=tmp, log=log)
    assert zygote.wait(pid, 180) == 0, log.read_text()[-2000:]
    times = sorted(
        128 / float(line.split("|")[4].split()[0])
        for line in log.read_text().splitlines()
        if (m := STEP_LINE.search(line)) and int(m.group(1)) > 5
    )
    return times[len(times) // 2]
