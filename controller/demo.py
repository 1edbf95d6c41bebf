"""``pyrecover demo``: the whole loop on one machine in a few minutes.

1. Prepare the offline sample corpus and tokenizer (kept between demos, like ``pyrecover data prepare``).
2. Measure this machine's start-up and step time with a short standalone worker, and size the run
   so it needs at least three walltime windows (``plan_steps``).
3. Start the controller in this process, exactly as ``pyrecover serve`` would run it: SQLite in the
   controller's data dir (``$PYRECOVER_DATA_DIR``, default ``./var``), the local scheduler, the
   dashboard. Submit one run whose attempts each get ``window_s`` seconds of walltime (45 s, or
   longer where a worker takes so long to start that 45 s would leave too little time to train).
4. Show progress live and one line per automatic resumption; end with a summary (attempts and end
   reasons, goodput, final loss, dashboard URL). Exit status 0 only if the run COMPLETED.

Ctrl-C (or SIGTERM) cancels the run, waits for its worker to stop, and stops the controller; as
a last resort it kills any worker this demo started, so no process outlives the demo.

Torch is never imported here: the worker always runs in a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.cli.client import Api, CliError, items
from controller.cli.views import pick, run_progress
from controller.settings import DEFAULT_PORT, Settings
from shared.schemas import TrainingSpec

console = Console()
WINDOW_S = 45
MIN_TRAIN_S = 15.0
"""Training seconds an automatically sized window leaves at least, after start-up and the stop."""
WINDOWS = 2.6
"""Work planned, in walltime windows: a third attempt is needed even if attempts train ~30% faster
than measured, and a slower machine only adds (short) attempts."""
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
DEMO_MARGIN_S = 5.0
"""Stop margin asked of the worker when the run spec can carry one (a tiny model saves in < 1 s)."""
# One intra-op thread: for a model this small, more threads only fight over the cores (measured
# ~3x faster per step on a loaded 2-core machine). Set for calibration and run alike.
WORKER_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    data_dir: Path
    """The controller's data dir: SQLite DB, run folders, logs, checkpoints (shared with serve)."""
    sample_dir: Path = Path("data")
    """Sample corpus and tokenizer, built there if missing (``pyrecover data prepare --out``)."""
    window_s: int | None = None
    """Walltime of every attempt, in seconds; ``None``: ``auto_window`` (45 s on a normal machine)."""
    port: int | None = None
    """Controller port; ``None``: 8000 when free, else any free port."""
    keep_serving: bool = False
    """Keep the controller and dashboard up after the summary, until Ctrl-C."""

    def __post_init__(self) -> None:
        if self.window_s is not None and not 20 <= self.window_s <= 3600:
            raise ValueError(f"window_s must be between 20 and 3600 seconds, got {self.window_s}")


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
    from worker.config import TrainConfig  # torch-free: dataclass defaults only

    allowance = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "exit_allowance")
    return DEMO_MARGIN_S + float(allowance)  # type: ignore[arg-type]


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


# ------------------------------------------------------------------------------ controller
def pick_port(wanted: int | None) -> int:
    """``wanted`` (0 or ``None``: 8000 if free, else any free port)."""
    candidates = [wanted] if wanted else [DEFAULT_PORT, 0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"port {wanted} is in use: choose another with --port")


def demo_settings(data_dir: Path, port: int) -> Settings:
    """What ``pyrecover serve`` would run with, on SQLite in ``data_dir``, tuned for short windows."""
    return Settings(
        data_dir=data_dir,
        database_url="",  # always the SQLite file in data_dir, whatever the environment says
        host="127.0.0.1",
        port=port,
        public_url="",
        auth_required=False,  # loopback only (validate_for_serving would refuse anything else)
        open_read_only=False,
        run_reconciler=True,
        reconcile_interval_s=1.0,
        local_kill_wait_s=10.0,
        local_signal_lead_s=0.0,
        worker_python=sys.executable,
        checkpoint_root=None,
    )


class DemoController:
    """The controller (API + reconciler + dashboard) served by uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from controller.api import create_app
        from controller.db import upgrade_database

        settings.validate_for_serving()
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        upgrade_database(settings.database_url)
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="pyrecover-demo-server", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def kill_own_workers(self) -> int:
        """SIGKILL any worker still alive from a job this process submitted; returns how many jobs."""
        from controller.scheduler.local import LocalScheduler
        from controller.scheduler.registry import local_state_dir

        state_dir = local_state_dir(self.settings.data_dir)
        # Job ids carry the submitting process's pid: the in-process controller's are ours alone.
        mine = [p.stem for p in state_dir.glob(f"local-{os.getpid()}-*.json")]
        scheduler = LocalScheduler(state_dir, kill_wait_s=0.0)
        live = [job for job, status in scheduler.poll(mine).items() if not status.state.finished]
        scheduler.shutdown(kill=True)
        return len(live)


# ------------------------------------------------------------------------------ watching
def _step_name(path: str | None) -> str:
    return Path(path).name if path else "scratch"


def _seconds(a: Any, b: Any) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(str(b)) - datetime.fromisoformat(str(a))).total_seconds()
    except (TypeError, ValueError):
        return None


def _ended(job: dict[str, Any]) -> str:
    return (
        f"attempt {job['number']} ended by [bold]{job.get('end_reason')}[/] at step {job.get('step_at_end')}"
    )


def _worker_started(job: dict[str, Any]) -> bool:
    """The worker reported (its first report says where it resumed from); the scheduler's RUNNING
    only means the process exists."""
    return job.get("last_report_at") is not None


def attempt_status(job: dict[str, Any]) -> str:
    state = job.get("state")
    if state in ("SUBMITTING", "PENDING") or (state == "RUNNING" and not _worker_started(job)):
        return "starting the worker…"
    if state == "RUNNING":
        return "training"
    if state == "STOPPING":
        return "deadline near: saving the final checkpoint"
    return f"ended: {job.get('end_reason')}"


class Watcher:
    """Polls the run and prints one line per automatic resumption, under a live progress bar."""

    def __init__(self, api: Api, run_id: int, window_s: int) -> None:
        self.api = api
        self.run_id = run_id
        self.window_s = window_s
        self.announced: set[int] = set()
        self.loss: float | None = None
        self.first_loss: float | None = None

    def poll(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        detail = self.api.get(f"/runs/{self.run_id}")
        jobs = items(self.api.get(f"/runs/{self.run_id}/jobs"))
        ends = items(self.api.get(f"/runs/{self.run_id}/metrics", max_points=2))
        losses = [float(m["loss"]) for m in ends if m.get("loss") is not None]
        if losses:
            self.first_loss, self.loss = losses[0], losses[-1]
        return dict(detail), jobs

    def lines(self, jobs: list[dict[str, Any]]) -> Iterator[str]:
        """One line per attempt whose worker has started since the last poll, in attempt order."""
        for i, job in enumerate(jobs):
            n = int(job["number"])
            if n in self.announced or not _worker_started(job):
                continue
            self.announced.add(n)
            if i == 0:
                yield f"attempt {n} started fresh (walltime {self.window_s} s)"
            else:
                yield f"{_ended(jobs[i - 1])} [bold green]→[/] attempt {n} resumed from " + (
                    f"[bold]{_step_name(job.get('resumed_from'))}[/]"
                )

    def watch(self, limit_s: float) -> dict[str, Any]:
        """Until the run is terminal (or ``limit_s``); returns the last run detail."""
        end = time.monotonic() + limit_s
        with Progress(
            TextColumn("[bold]{task.fields[attempt]}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("steps  loss {task.fields[loss]}  {task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("run", total=None, attempt="attempt –", loss="–", status="queued")
            while True:
                detail, jobs = self.poll()
                for line in self.lines(jobs):
                    progress.console.print(f"  {line}", highlight=False)
                step, total = run_progress(detail)
                last = jobs[-1] if jobs else None
                progress.update(
                    task,
                    completed=step,
                    total=total or None,
                    attempt=f"attempt {last['number']}" if last else "attempt –",
                    loss=f"{self.loss:.3f}" if self.loss is not None else "–",
                    status=attempt_status(last) if last else str(detail.get("state")),
                )
                if detail.get("state") in TERMINAL or time.monotonic() > end:
                    progress.update(task, status=str(detail.get("state")))
                    if jobs and jobs[-1].get("state") == "ENDED":
                        progress.console.print(f"  {_ended(jobs[-1])}: run {detail.get('state')}")
                    return detail
                time.sleep(1.0)


# ------------------------------------------------------------------------------ summary
def summary_tables(
    detail: dict[str, Any], jobs: list[dict[str, Any]], watcher: Watcher, url: str, wall_s: float
) -> tuple[Table, Table]:
    attempts = Table(title="attempts", title_justify="left")
    for name, justify in (
        ("#", "right"),
        ("steps", "right"),
        ("resumed from", "left"),
        ("ended by", "left"),
        ("wall", "right"),
        ("start-up", "right"),
    ):
        attempts.add_column(name, justify=justify)  # type: ignore[arg-type]
    for job in jobs:
        wall = _seconds(job.get("start_time"), job.get("end_time"))
        at_end = job.get("step_at_end")
        attempts.add_row(
            str(job.get("number")),
            f"{job.get('step_at_start') or 0} → {at_end if at_end is not None else '…'}",
            _step_name(job.get("resumed_from")),
            str(job.get("end_reason") or job.get("state")),
            f"{wall:.0f} s" if wall is not None else "",
            f"{float(job.get('startup_s') or 0):.0f} s",
        )
    facts = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    step, total = run_progress(detail)
    state = str(detail.get("state"))
    color = "green" if state == "COMPLETED" else "red"
    facts.add_row("run", f"{detail.get('name')} (id {detail.get('id')})")
    facts.add_row("state", f"[bold {color}]{state}[/]")
    facts.add_row("steps", f"{step}/{total}")
    resumptions = max(0, len(jobs) - 1)
    timeouts = sum(1 for j in jobs if j.get("end_reason") == "timeout_killed")
    facts.add_row(
        "attempts",
        f"{len(jobs)} ({resumptions} automatic resumption{'s' if resumptions != 1 else ''}, "
        f"{timeouts} killed at the time limit)",
    )
    goodput = pick(detail, "goodput")
    gd = detail.get("goodput_detail") or {}
    if isinstance(goodput, int | float):
        facts.add_row(
            "goodput",
            f"{goodput:.1%} ({float(gd.get('productive_committed_s', 0)):.0f} s of committed training "
            f"in {float(gd.get('allocated_s', 0)):.0f} s allocated; the rest is start-up and saves)",
        )
    if watcher.loss is not None and watcher.first_loss is not None:
        facts.add_row("final loss", f"{watcher.loss:.4f} (first {watcher.first_loss:.4f})")
    facts.add_row("dashboard", f"{url}/runs/{detail.get('id')}")
    facts.add_row("wall time", f"{wall_s:.0f} s")
    return attempts, facts


# ------------------------------------------------------------------------------ the demo
@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the same clean path as Ctrl-C (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(options: DemoOptions) -> int:
    """The demo; returns the exit status (0: COMPLETED, 1: not, 130: interrupted)."""
    with sigterm_as_interrupt():
        try:
            return _run(options, time.monotonic())
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            return 130
        except (CliError, RuntimeError, ValueError) as exc:
            console.print(f"[bold red]demo failed:[/] {exc}", highlight=False)
            return 1


def _run(options: DemoOptions, started: float) -> int:
    console.rule("[bold]pyrecover demo")
    console.print(f"[bold]1/4[/] sample corpus and tokenizer in {options.sample_dir}")
    from worker.data.prepare import prepare

    dataset, tokenizer = (p.absolute() for p in prepare(options.sample_dir, console=console))
    console.print("[bold]2/4[/] measuring this machine (a short standalone worker, tiny model on CPU)")
    with tempfile.TemporaryDirectory(prefix="pyrecover-calibrate-") as work:
        cal = calibrate(dataset, tokenizer, Path(work))
    overhead = worker_stop_overhead()
    window = options.window_s or auto_window(cal, overhead)
    steps = plan_steps(cal, window, overhead)
    per_window = useful_seconds(cal, window, overhead) / cal.step_time
    console.print(
        f"    {cal.step_time * 1000:.0f} ms/step, worker start-up {cal.startup:.1f} s "
        f"→ [bold]{steps} steps[/], ≈ {per_window:.0f} steps per {window} s window: ≥ 3 attempts"
    )
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 1.5 * cores:
        console.print(
            f"    [yellow]this machine is busy (load {load:.1f} on {cores} cores): start-up and steps "
            "will vary, so expect more attempts and a longer demo[/]"
        )
    settings = demo_settings(options.data_dir, pick_port(options.port))
    ctl = DemoController(settings)
    console.print(
        f"[bold]3/4[/] controller on {ctl.url} (SQLite in {options.data_dir}/, local scheduler, dashboard)"
    )
    ctl.start()
    api = Api(url=ctl.url)
    run_id: int | None = None
    try:
        body = {
            "name": f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
            "training": training_body(dataset, tokenizer, steps, "demo"),
            "resources": {
                "scheduler": "local",
                "time_limit": f"{window}s",
                "signal_lead_seconds": 0,
                "env": WORKER_ENV,
            },
            "policy": {"max_attempts": 20, "backoff_seconds": 1},
        }
        run = api.post("/runs", body)
        run_id = int(run["id"])
        console.print(
            f"[bold]4/4[/] run [bold]{run['name']}[/] submitted; every stop and resumption below is "
            f"automatic (dashboard: {ctl.url}/runs/{run_id})"
        )
        watcher = Watcher(api, run_id, window)
        detail = watcher.watch(limit_s=900)
        jobs = items(api.get(f"/runs/{run_id}/jobs"))
        console.rule("summary")
        attempts, facts = summary_tables(detail, jobs, watcher, ctl.url, time.monotonic() - started)
        console.print(attempts)
        console.print(facts)
        ok = detail.get("state") == "COMPLETED"
        if not ok:
            console.print(
                f"[bold red]the run did not complete (state {detail.get('state')}); "
                f"worker logs: pyrecover logs {run_id} --data-dir {options.data_dir}[/]"
            )
        if options.keep_serving:
            serve_until_interrupted(ctl, options)
        return 0 if ok else 1
    finally:
        shut_down(ctl, api, run_id)


def serve_until_interrupted(ctl: DemoController, options: DemoOptions) -> None:
    hint = "" if ctl.settings.port == DEFAULT_PORT else f"PYRECOVER_URL={ctl.url} "
    console.print(
        f"controller and dashboard still serving at [bold]{ctl.url}[/]; try `{hint}pyrecover runs` or "
        f"`pyrecover logs <run> --data-dir {options.data_dir}`. Ctrl-C stops it."
    )
    with contextlib.suppress(KeyboardInterrupt):
        while ctl.thread.is_alive():
            time.sleep(0.5)


def shut_down(ctl: DemoController, api: Api, run_id: int | None) -> None:
    """Cancel the run if it is still live, stop the controller, and leave no worker behind.

    A second Ctrl-C skips the wait for a graceful stop and goes straight to killing.
    """
    try:
        if run_id is not None and api.get(f"/runs/{run_id}").get("state") not in TERMINAL:
            console.print(f"cancelling run {run_id} (its worker saves a checkpoint and exits) …")
            api.post(f"/runs/{run_id}/cancel")
            end = time.monotonic() + ctl.settings.local_kill_wait_s + 30
            while time.monotonic() < end and api.get(f"/runs/{run_id}").get("state") not in TERMINAL:
                time.sleep(0.5)
            console.print(f"run {run_id}: {api.get(f'/runs/{run_id}').get('state')}")
    except (KeyboardInterrupt, CliError) as exc:
        console.print(f"[yellow]not waiting for a graceful stop ({type(exc).__name__})[/]")
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            ctl.stop()
        try:
            killed = ctl.kill_own_workers()
        except KeyboardInterrupt:  # impatient: once more, it only takes a moment
            killed = ctl.kill_own_workers()
        if killed:
            console.print(f"[yellow]killed the processes of {killed} unfinished job(s)[/]")
