"""``pyrecover demo``: the whole loop on one machine in a few minutes.

1. Prepare the offline sample corpus and tokenizer (cached between demos).
2. Measure this machine's step time with a short standalone worker, so the run needs at least
   three walltime windows yet finishes in time.
3. Start the controller in-process (SQLite in a fresh data dir, the local scheduler) and submit
   one run with a short walltime per attempt.
4. Show progress and every automatic stop and resumption live; end with a summary (attempts and
   end reasons, goodput, final loss, dashboard URL). Exit status 0 only if the run COMPLETED.

Torch is never imported here: the worker always runs in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.cli.client import Api, items
from controller.cli.views import attempts_table, pick, run_progress
from shared.schemas import TrainingSpec

console = Console()
WINDOW_S = 45
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@dataclass(frozen=True)
class Calibration:
    step_time: float
    """Seconds per optimizer step, measured."""
    startup: float
    """Seconds from process start to the first reported step (imports, data, model)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def training_body(
    name: str, dataset: Path, tokenizer: Path, steps: int, checkpoint_dir: Path
) -> dict[str, Any]:
    return {
        "dataset": str(dataset),
        "tokenizer_name_or_path": str(tokenizer),
        "training_steps": steps,
        "model_preset": "tiny",
        "sequence_length": 128,
        "batch_size": 8,
        "model_dtype": "fp32",
        "lr_warmup_steps": min(10, steps),
        "logging_frequency": 5,
        "checkpoint_dir": str(checkpoint_dir),
        "checkpoint_frequency": max(10, steps // 10),
        "log_loss_to_csv": False,
    }


def calibrate(dataset: Path, tokenizer: Path, work: Path, steps: int = 20) -> Calibration:
    """Run the real worker for ``steps`` steps, standalone, and read its reported step time."""
    dataset, tokenizer, work = dataset.resolve(), tokenizer.resolve(), work.resolve()
    capture = _Capture()
    token = work / "calibrate.token"
    token.write_text("calibration\n")
    body = training_body("calibrate", dataset, tokenizer, 1000, work / "ckpt") | {"checkpoint_frequency": -1}
    argv = [sys.executable, "-m", "worker", *TrainingSpec(**body).to_worker_args()]
    argv += ["--experiment-name", "calibrate", "--stop-after-steps", str(steps)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")},
        "PYRECOVER_CONTROLLER_URL": capture.url,
        "PYRECOVER_RUN_ID": "1",
        "PYRECOVER_ATTEMPT": "1",
        "PYRECOVER_TOKEN_FILE": str(token),
    }
    t0 = time.time()
    try:
        proc = subprocess.run(
            argv, env=env, cwd=work, capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        capture.close()
    if proc.returncode != 0:
        raise RuntimeError(f"the calibration worker failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    progress = [e for e in capture.events if e.get("type") == "progress" and e.get("step_time")]
    if not progress:
        raise RuntimeError("the calibration worker reported no progress")
    # The first report includes warm-up. Of the rest take the fastest: on a shared machine other
    # load only ever slows a step down, and too fast an estimate errs towards more windows.
    step_time = min(float(e["step_time"]) for e in progress[1:] or progress)
    first = min(float(e["time"]) for e in progress)
    return Calibration(
        step_time=step_time, startup=max(0.0, first - t0 - step_time * int(progress[0]["step"]))
    )


def steps_for(
    cal: Calibration, *, window_s: float = WINDOW_S, windows: float = 2.5, margin_s: float = 15.0
) -> int:
    """Steps that fill ``windows`` walltime windows (each loses start-up, the stop margin and a save)."""
    per_window = max(5.0, window_s - cal.startup - margin_s - 3.0)
    return max(30, math.ceil(windows * per_window / cal.step_time))


def start_controller(data_dir: Path, port: int) -> tuple[Any, threading.Thread, str]:
    """The controller (API + reconciler) in a background thread; returns (server, thread, user token)."""
    import uvicorn

    from controller.api import create_app
    from controller.db import make_engine, make_session_factory, upgrade_database
    from controller.services import create_user_token
    from controller.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=port,
        reconcile_interval_s=1.0,
        local_kill_wait_s=10.0,
        worker_python=sys.executable,
    )
    upgrade_database(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    with factory() as session:
        token = create_user_token(session, name="demo")
        session.commit()
    app = create_app(settings, session_factory=factory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="pyrecover-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the controller did not start")
        time.sleep(0.05)
    return server, thread, str(token)


def watch(api: Api, run_id: int, limit_s: float) -> dict[str, Any]:
    """Live progress and one line per attempt change, until the run is terminal (or ``limit_s``)."""
    seen: dict[int, tuple[Any, Any]] = {}
    end = time.monotonic() + limit_s
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("training", total=None, info="")
        while True:
            detail = api.get(f"/runs/{run_id}")
            for job in items(api.get(f"/runs/{run_id}/jobs")):
                number = int(pick(job, "number", "attempt", default=0))
                now = (job.get("state"), job.get("end_reason"))
                if seen.get(number) == now:
                    continue
                seen[number] = now
                if now[1]:
                    progress.console.print(
                        f"  attempt {number} ended: [bold]{now[1]}[/] at step {job.get('step_at_end')}"
                    )
                elif now[0] == "RUNNING":
                    start = job.get("step_at_start") or 0
                    what = f"resuming from step {start}" if start else "starting fresh"
                    progress.console.print(f"  attempt {number} running ({what})")
            step, total = run_progress(detail)
            progress.update(task, completed=step, total=total or None, info=str(detail.get("state")))
            if detail.get("state") in TERMINAL or time.monotonic() > end:
                return dict(detail)
            time.sleep(1.0)


def summary(api: Api, run_id: int, detail: dict[str, Any], url: str) -> None:
    jobs = items(api.get(f"/runs/{run_id}/jobs"))
    console.print(attempts_table(jobs))
    table = Table(show_header=False, box=None)
    step, total = run_progress(detail)
    table.add_row("state", f"[bold]{detail.get('state')}[/]")
    table.add_row("steps", f"{step}/{total}")
    table.add_row("attempts", str(len(jobs)))
    goodput = pick(detail, "goodput", "goodput.goodput")
    if isinstance(goodput, int | float):
        table.add_row("goodput", f"{goodput:.1%}")
    metrics = items(api.get(f"/runs/{run_id}/metrics"))
    losses = [m for m in metrics if pick(m, "loss") is not None]
    if losses:
        table.add_row("final loss", f"{float(losses[-1]['loss']):.4f} (first {float(losses[0]['loss']):.4f})")
    table.add_row("dashboard", f"{url}/runs/{run_id}")
    console.print(table)


def run_demo(*, base_dir: Path, keep_serving: bool, window_s: int = WINDOW_S) -> int:
    started = time.monotonic()
    base_dir = base_dir.resolve()
    data_cache = base_dir / "data"
    controller_dir = base_dir / "controller"
    shutil.rmtree(controller_dir, ignore_errors=True)  # fresh DB and runs every time; data is cached
    controller_dir.mkdir(parents=True)
    console.rule("[bold]pyrecover demo")
    console.print("1/4 sample corpus and tokenizer ...")
    from worker.data.prepare import ensure_sample_data

    dataset, tokenizer = ensure_sample_data(data_cache)
    console.print(f"    {dataset}\n    {tokenizer}")
    console.print("2/4 measuring this machine's step time (tiny model, CPU) ...")
    with tempfile.TemporaryDirectory(prefix="pyrecover-calibrate-") as work:
        cal = calibrate(dataset, tokenizer, Path(work))
    steps = steps_for(cal, window_s=window_s)
    console.print(
        f"    {cal.step_time * 1000:.0f} ms/step, start-up {cal.startup:.1f} s → {steps} steps, "
        f"walltime {window_s} s per attempt (needs ≥ 3 attempts)"
    )
    port = free_port()
    console.print(
        f"3/4 controller on http://127.0.0.1:{port} (SQLite in {controller_dir}, local scheduler) ..."
    )
    server, thread, token = start_controller(controller_dir, port)
    url = f"http://127.0.0.1:{port}"
    api = Api(url=url, token=token)
    run_id: int | None = None
    ok = False
    try:
        body = {
            "name": f"demo-{time.strftime('%H%M%S')}",
            "training": training_body("demo", dataset, tokenizer, steps, controller_dir / "checkpoints"),
            "resources": {"scheduler": "local", "time_limit": f"{window_s}s", "signal_lead_seconds": 0},
            "policy": {"max_attempts": 10, "backoff_seconds": 1},
        }
        run = api.post("/runs", body)
        run_id = int(run["id"])
        console.print(f"4/4 run [bold]{run['name']}[/] submitted; every stop and resumption is automatic:")
        detail = watch(api, run_id, limit_s=max(60.0, 235.0 - (time.monotonic() - started)))
        console.rule("summary")
        summary(api, run_id, detail, url)
        console.print(f"total {time.monotonic() - started:.0f} s")
        ok = detail.get("state") == "COMPLETED"
        if not ok:
            console.print(f"[bold red]the run did not complete (state {detail.get('state')})[/]")
        if keep_serving:
            console.print(f"controller still serving at {url} (token in {controller_dir}); Ctrl-C to stop")
            (controller_dir / "cli.json").write_text(json.dumps({"url": url, "token": token}))
            try:
                while thread.is_alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        if run_id is not None and not ok:
            _cancel_quietly(api, run_id)  # never leave worker processes behind
        server.should_exit = True
        thread.join(15)


def _cancel_quietly(api: Api, run_id: int) -> None:
    try:
        api.post(f"/runs/{run_id}/cancel")
        end = time.monotonic() + 30
        while time.monotonic() < end and api.get(f"/runs/{run_id}").get("state") not in TERMINAL:
            time.sleep(1)
    except Exception as exc:  # best effort on the way out
        console.print(f"could not cancel run {run_id}: {exc}")
