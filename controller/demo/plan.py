"""Sizing the demo run: measure this machine with a short standalone worker (``calibrate``), then
choose the walltime window (``auto_window``) and the steps that need at least three of them
(``plan_steps``). Torch is never imported here: the worker runs in a subprocess."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.schemas import TrainingSpec
from shared.training import EXIT_ALLOWANCE_S

WINDOW_S = 45
MIN_TRAIN_S = 15.0
"""Training seconds an automatically sized window leaves at least, after start-up and the stop."""
WINDOWS = 2.6
"""Work planned, in walltime windows: a third attempt is needed even if attempts train ~30% faster
than measured, and a slower machine only adds (short) attempts."""
DEMO_MARGIN_S = 5.0
"""Stop margin asked of the worker when the run spec can carry one (a tiny model saves in < 1 s)."""
# One intra-op thread: for a model this small, more threads only fight over the cores (measured
# ~3x faster per step on a loaded 2-core machine). Set for calibration and run alike.
WORKER_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Calibration:
    step_time: float
    """Seconds per optimizer step (median after warm-up)."""
    startup: float
    """Seconds from spawning the worker to its first training step (imports, data, model)."""
    save: float
    """Seconds for one checkpoint save."""


# ------------------------------------------------------------------------------ planning
def worker_stop_overhead() -> float:
    """Seconds the worker keeps free before its deadline: the demo's stop margin + exit allowance."""
    return DEMO_MARGIN_S + EXIT_ALLOWANCE_S


def useful_seconds(cal: Calibration, window_s: float, stop_overhead: float) -> float:
    """Training seconds one window leaves after start-up, the stop rule's reserve and the final save.

    Measured on a busy 2-core machine, attempts start (and step) slower than the calibration
    worker rather than faster, so the estimate is not discounted: ``WINDOWS`` keeps a third
    attempt needed even if the run goes ~30% faster than measured.
    """
    reserve = stop_overhead + 1.5 * cal.step_time + 1.2 * cal.save + 1.0  # worker.deadline.StopPolicy
    return window_s - cal.startup - 1.5 - reserve  # 1.5 s: loading the checkpoint on resume


def auto_window(cal: Calibration, stop_overhead: float) -> int:
    """45 s, or what leaves ``MIN_TRAIN_S`` of training after a start-up as slow as the measured one.

    On a busy machine a worker may need 30 s just to start; fixed 45 s windows would then end
    attempts before their first step (no progress), so the windows grow instead.
    """
    reserve = stop_overhead + 1.5 * cal.step_time + 1.2 * cal.save + 1.0
    return max(WINDOW_S, math.ceil(cal.startup + 1.5 + reserve + MIN_TRAIN_S))


def plan_steps(cal: Calibration, window_s: float, stop_overhead: float, windows: float = WINDOWS) -> int:
    """Training steps that fill ``windows`` walltime windows on this machine (``ValueError`` if none fit)."""
    useful = useful_seconds(cal, window_s, stop_overhead)
    if useful < max(3.0, 5 * cal.step_time):
        need = math.ceil(window_s - useful + max(3.0, 5 * cal.step_time))
        raise ValueError(
            f"a {window_s:.0f} s window leaves no time to train here (start-up {cal.startup:.0f} s, "
            f"stop reserve {stop_overhead:.0f} s): use --window {need} or more"
        )
    return max(12, math.ceil(windows * useful / cal.step_time))


def training_body(
    dataset: Path, tokenizer: Path, steps: int, checkpoint_dir: str, *, logging_frequency: int = 5
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": str(dataset),
        "tokenizer_name_or_path": str(tokenizer),
        "training_steps": steps,
        "model_preset": "tiny",
        "sequence_length": 128,
        "batch_size": 8,
        "learning_rate": 3e-3,  # a tiny model learns visibly within a couple of hundred steps
        "lr_warmup_steps": min(10, steps),
        "model_dtype": "fp32",
        "logging_frequency": logging_frequency,
        "checkpoint_dir": checkpoint_dir,
        "checkpoint_frequency": max(10, steps // 4),
        "log_loss_to_csv": False,
        "deadline_margin": DEMO_MARGIN_S,
    }
    return body


# ------------------------------------------------------------------------------ calibration
class _Capture:
    """A throwaway report endpoint: the calibration worker reports its step times here."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                capture.events.extend(body.get("events", []))
                reply = json.dumps({"accepted": len(body.get("events", [])), "duplicates": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def calibrate(dataset: Path, tokenizer: Path, work: Path, steps: int = 30) -> Calibration:
    """Run the real worker standalone for ``steps`` steps and read its reports."""
    capture = _Capture()
    token = work / "calibrate.token"
    token.write_text("calibration\n")
    body = training_body(dataset, tokenizer, 1000, str(work / "ckpt"), logging_frequency=1)
    argv = [sys.executable, "-m", "worker", *TrainingSpec(**body).to_worker_args()]
    argv += ["--experiment-name", "calibrate", "--stop-after-steps", str(steps)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")},
        **WORKER_ENV,
        "PYRECOVER_CONTROLLER_URL": capture.url,
        "PYRECOVER_RUN_ID": "1",
        "PYRECOVER_ATTEMPT": "1",
        "PYRECOVER_TOKEN_FILE": str(token),
    }
    t0 = time.time()
    try:
        proc = subprocess.run(
            argv, env=env, cwd=work, capture_output=True, text=True, timeout=300, check=False
        )
    finally:
        capture.close()
    if proc.returncode != 0:
        raise RuntimeError(f"the calibration worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    events = capture.events
    times = [float(e["step_time"]) for e in events if e.get("type") == "progress" and e.get("step_time")]
    started = [float(e["time"]) for e in events if e.get("type") == "started"]
    saves = [float(e["save_seconds"]) for e in events if e.get("type") == "checkpoint_committed"]
    if not times or not started:
        raise RuntimeError("the calibration worker reported no progress")
    # The first steps include warm-up (allocator, caches), and one slow step on a busy machine must
    # not make the plan think every step is slow: the median after warm-up, like the stop policy.
    return Calibration(
        step_time=statistics.median(times[len(times) // 2 :]),
        startup=max(0.0, started[0] - t0),
        save=max(saves, default=1.0),
    )
