"""``controller.demo.run`` and ``pyrecover demo``: the port, the help, then the real thing end to end,
and Ctrl-C.

The end-to-end tests run the real command in a subprocess (controller on SQLite, local backend, a
real worker through at least three walltime windows), so they are slow; the only concession to
speed is the shared sample data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.demo.run import pick_port

CLI = "from controller.cli import main; main()"


def test_pick_port_refuses_a_busy_port_and_finds_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):
            pick_port(port)
    free = pick_port(None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", free))


def test_demo_help_explains_every_option() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--keep-serving", "--data-dir", "--sample-dir", "--window", "--port", "./var"):
        assert option in result.output, option


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.data.prepare import ensure_sample_data

    directory = tmp_path_factory.mktemp("demo-sample")
    ensure_sample_data(directory)
    return directory


def demo_process(tmp_path: Path, sample_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")}
    env["COLUMNS"] = "200"  # no wrapped lines to match against
    options = ["--data-dir", str(tmp_path / "var"), "--sample-dir", str(sample_dir)]
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "demo", *options, "--port", str(pick_port(None)), *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    """Whatever happened, leave no demo behind: Ctrl-C first (it cancels the run), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Output:
    """Collects a process's output lines in a thread, so waiting for one can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout or []), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, limit_s: float) -> None:
        end = time.monotonic() + limit_s
        while needle not in self.text:
            assert time.monotonic() < end and self.thread.is_alive(), self.text
            time.sleep(0.2)


def db_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "pyrecover.db") as db:
        return list(db.execute(sql))


def live_worker_pids(data_dir: Path) -> list[int]:
    """Pids recorded by the local backend that still run (zombies excluded)."""
    alive = []
    for path in (data_dir / "local-jobs").glob("*.json"):
        for pid in json.loads(path.read_text()).get("pids", []):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
    return alive


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_through_three_windows_to_completed(tmp_path: Path, sample_dir: Path) -> None:
    proc = demo_process(tmp_path, sample_dir)
    try:
        # ~3 min on 2 idle cores; the demo itself gives up watching after 15 min.
        out, _ = proc.communicate(timeout=1000)
    finally:
        stop(proc)
    assert proc.returncode == 0, out
    data_dir = tmp_path / "var"
    attempts = db_rows(data_dir, "SELECT number, end_reason FROM attempts ORDER BY number")
    assert len(attempts) >= 3, out
    assert attempts[-1][1] == "finished" and all(r == "deadline_stop" for _, r in attempts[:-1]), attempts
    assert db_rows(data_dir, "SELECT state FROM runs") == [("COMPLETED",)]
    for n in range(1, len(attempts)):
        assert re.search(
            rf"attempt {n} ended by deadline_stop at step \d+ → attempt {n + 1} resumed from step-\d+", out
        ), out
    for expected in ("summary", "COMPLETED", "goodput", "final loss", "automatic resumptions"):
        assert expected in out, expected
    assert re.search(r"dashboard\s+http://127\.0\.0\.1:\d+/runs/1", out), out
    assert live_worker_pids(data_dir) == []


@pytest.mark.integration
@pytest.mark.slow
def test_ctrl_c_cancels_the_run_and_leaves_no_process(tmp_path: Path, sample_dir: Path) -> None:
    proc = demo_process(tmp_path, sample_dir)
    output = Output(proc)
    try:
        output.wait_for("attempt 1 started fresh", limit_s=300)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
    finally:
        stop(proc)
        output.thread.join(10)  # EOF once the demo has exited
        assert proc.stdout is not None
        proc.stdout.close()
    out = output.text
    assert proc.returncode == 130, out
    assert "cancelling run" in out and "CANCELLED" in out, out
    data_dir = tmp_path / "var"
    assert db_rows(data_dir, "SELECT state FROM runs") == [("CANCELLED",)]
    assert live_worker_pids(data_dir) == []


def test_the_demo_controller_authenticates_and_hands_out_a_one_time_link(tmp_path: Path) -> None:
    """The demo's controller runs with auth on, calls itself with its own token, and its sign-in
    link carries a one-time code, never that token."""
    import httpx

    from controller.demo.run import DemoController, demo_settings

    ctl = DemoController(demo_settings(tmp_path / "var", pick_port(None)))
    ctl.settings.run_reconciler = False
    ctl.start()
    try:
        assert httpx.get(f"{ctl.url}/api/v1/runs").status_code == 401
        token = ctl.demo_token()
        runs = httpx.get(f"{ctl.url}/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
        assert runs.status_code == 200
        link = ctl.login_link("/runs/1")
        assert token not in link and link.startswith(f"{ctl.url}/login/link?code=")
        first = httpx.get(link, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/runs/1"
        assert token not in first.headers["set-cookie"]
        assert httpx.get(link, follow_redirects=False).status_code == 401, "a second use signs nobody in"
    finally:
        ctl.stop()
