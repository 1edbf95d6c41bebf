"""Running the demo: the in-process controller (``DemoController``), the four steps of
``run_demo``, and a shutdown that leaves no worker behind.

The demo's controller authenticates like any other: the demo makes itself a user ``demo`` and a
token (a day's lifetime) that its own calls send, and prints a one-time sign-in link for the
dashboard: the link carries a code that is exchanged once for a dashboard session, never a
token."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.cli.account_cmds import login_url
from controller.cli.client import Api, CliError, items, load_config, save_config
from controller.demo.plan import (
    WORKER_ENV,
    auto_window,
    calibrate,
    plan_steps,
    training_body,
    useful_seconds,
    worker_stop_overhead,
)
from controller.demo.watch import Watcher, console, summary_tables
from controller.settings import DEFAULT_PORT, Settings
from shared.states import TERMINAL_RUN_STATES


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


def demo_settings(data_dir: Path, port: int, *, roots: Sequence[Path] = ()) -> Settings:
    """What ``pyrecover serve`` would run with, on SQLite in ``data_dir``, tuned for short windows.

    ``roots``: directories (the sample corpus's, a scratch directory) that runs may read data from
    and write checkpoints to, besides the defaults (``Settings.data_roots``, ``checkpoint_root``).
    """
    extra = [Path(r).absolute() for r in roots]
    return Settings(
        data_dir=data_dir,
        database_url="",  # always the SQLite file in data_dir, whatever the environment says
        host="127.0.0.1",
        port=port,
        public_url="",
        auth_required=True,
        open_read_only=False,
        run_reconciler=True,
        reconcile_interval_s=1.0,
        local_kill_wait_s=10.0,
        local_signal_lead_s=0.0,
        worker_python=sys.executable,
        checkpoint_root=None,
        data_roots=[Path.cwd(), Path(data_dir).absolute(), *extra],
        checkpoint_roots=extra,
    )


DEMO_USER = "demo"
TOKEN_TTL_S = 86_400
LINK_TTL_S = 3_600
"""The sign-in link outlives a demo with ``--keep-serving`` for a while; it works once."""


class DemoController:
    """The controller (API + reconciler + dashboard) served by uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from controller.api import create_app
        from controller.db import make_engine, make_session_factory, upgrade_database
        from controller.serving import uvicorn_config

        settings.validate_for_serving()
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        upgrade_database(settings.database_url)
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self.engine = make_engine(settings.database_url)
        self.factory = make_session_factory(self.engine)
        config = uvicorn_config(
            create_app(settings, session_factory=self.factory), settings, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="pyrecover-demo-server", daemon=True)

    def demo_token(self) -> str:
        """A day-long token for the demo's user (created on first use; the first user is an admin)."""
        from controller.services import create_user_token

        with self.factory() as session:
            token = create_user_token(session, DEMO_USER, ttl_s=TOKEN_TTL_S)
            session.commit()
        return token

    def login_link(self, next_path: str = "/") -> str:
        """A one-time dashboard sign-in link for the demo's user."""
        from controller.services import get_user
        from controller.services.sessions import issue_login_code

        with self.factory() as session:
            code = issue_login_code(session, get_user(session, DEMO_USER), ttl_s=LINK_TTL_S)
            session.commit()
        return login_url(self.url, code, next_path)

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
        self.engine.dispose()

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
    settings = demo_settings(options.data_dir, pick_port(options.port), roots=[options.sample_dir])
    ctl = DemoController(settings)
    console.print(
        f"[bold]3/4[/] controller on {ctl.url} (SQLite in {options.data_dir}/, local scheduler, dashboard)"
    )
    ctl.start()
    api = Api(url=ctl.url, token=ctl.demo_token())
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
        console.print(
            f"    sign in to the dashboard (one-time link): {ctl.login_link(f'/runs/{run_id}')}",
            highlight=False,
            soft_wrap=True,
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
            serve_until_interrupted(ctl, options, api)
        return 0 if ok else 1
    finally:
        shut_down(ctl, api, run_id)


def serve_until_interrupted(ctl: DemoController, options: DemoOptions, api: Api) -> None:
    hint = "" if ctl.settings.port == DEFAULT_PORT else f"PYRECOVER_URL={ctl.url} "
    if api.token is not None and not load_config(options.data_dir).get("token"):
        # So that the CLI commands suggested below authenticate (0600, in the demo's data dir).
        path = save_config(options.data_dir, url=ctl.url, token=api.token)
        console.print(f"the demo's token (valid a day) is saved in {path} for the CLI", style="dim")
    console.print(f"a new sign-in link: {ctl.login_link()}", highlight=False, soft_wrap=True)
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
        if run_id is not None and api.get(f"/runs/{run_id}").get("state") not in TERMINAL_RUN_STATES:
            console.print(f"cancelling run {run_id} (its worker saves a checkpoint and exits) …")
            api.post(f"/runs/{run_id}/cancel")
            end = time.monotonic() + ctl.settings.local_kill_wait_s + 30
            while time.monotonic() < end:
                if api.get(f"/runs/{run_id}").get("state") in TERMINAL_RUN_STATES:
                    break
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
