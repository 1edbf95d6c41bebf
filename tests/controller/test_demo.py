"""``pyrecover demo``: its planning and rendering, then the real thing end to end, and Ctrl-C.

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
from rich.console import Console
from typer.testing import CliRunner

from controller.cli import app
from controller.demo import (
    Calibration,
    Watcher,
    auto_window,
    pick_port,
    plan_steps,
    summary_tables,
    useful_seconds,
)

CLI = "from controller.cli import main; main()"


# ------------------------------------------------------------------------------ planning
def test_the_plan_needs_at_least_three_windows() -> None:
    for cal in (Calibration(0.3, 10.0, 0.5), Calibration(0.05, 4.0, 0.2), Calibration(1.2, 14.0, 0.6)):
        steps = plan_steps(cal, 45, stop_overhead=10.0)
        per_window = useful_seconds(cal, 45, 10.0) / cal.step_time
        # ceil(2.6 windows): a third attempt is needed unless attempts train ~30% faster than measured.
        assert 2.5 * per_window <= steps <= 2.7 * per_window + 1
        assert steps >= 12


def test_windows_are_45_s_unless_starting_a_worker_alone_takes_most_of_that() -> None:
    assert auto_window(Calibration(0.3, 10.0, 0.5), stop_overhead=10.0) == 45
    slow = Calibration(0.6, 30.0, 0.8)
    window = auto_window(slow, stop_overhead=10.0)
    assert window > 45
    assert 15 <= useful_seconds(slow, window, 10.0) < 16


def test_a_window_too_short_for_this_machine_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"use --window \d+ or more"):
        plan_steps(Calibration(0.5, 20.0, 1.0), 30, stop_overhead=20.0)


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


# ------------------------------------------------------------------------------ rendering
def job(number: int, state: str, **kw: Any) -> dict[str, Any]:
    return {"number": number, "state": state, "last_report_at": None, **kw}


def test_each_automatic_resumption_is_one_clear_line() -> None:
    watcher = Watcher(api=None, run_id=1, window_s=45)  # type: ignore[arg-type]
    assert list(watcher.lines([job(1, "PENDING")])) == []
    assert list(watcher.lines([job(1, "RUNNING")])) == []  # the process exists; the worker is loading
    first = job(1, "RUNNING", last_report_at="t")
    assert list(watcher.lines([first])) == ["attempt 1 started fresh (walltime 45 s)"]
    ended = job(1, "ENDED", end_reason="deadline_stop", step_at_end=57, last_report_at="t")
    assert list(watcher.lines([ended, job(2, "PENDING")])) == []
    assert list(watcher.lines([ended, job(2, "RUNNING")])) == []
    second = job(2, "RUNNING", resumed_from="/ck/demo/run/step-57", last_report_at="t")
    lines = [re.sub(r"\[/?[a-z ]*\]", "", line) for line in watcher.lines([ended, second])]
    assert lines == ["attempt 1 ended by deadline_stop at step 57 → attempt 2 resumed from step-57"]
    assert list(watcher.lines([ended, second])) == []  # said once


def test_the_summary_has_attempts_end_reasons_goodput_loss_and_url() -> None:
    watcher = Watcher(api=None, run_id=3, window_s=45)  # type: ignore[arg-type]
    watcher.first_loss, watcher.loss = 9.48, 6.51
    jobs = [
        job(1, "ENDED", step_at_start=0, step_at_end=40, end_reason="deadline_stop", startup_s=9.5),
        job(
            2, "ENDED", step_at_start=40, step_at_end=80, end_reason="deadline_stop", resumed_from="x/step-40"
        ),
        job(3, "ENDED", step_at_start=80, step_at_end=100, end_reason="finished", resumed_from="x/step-80"),
    ]
    detail = {
        "id": 3,
        "name": "demo-x",
        "state": "COMPLETED",
        "current_step": 100,
        "training_steps": 100,
        "goodput": 0.42,
        "goodput_detail": {"productive_committed_s": 42.0, "allocated_s": 100.0},
    }
    console = Console(record=True, width=160)
    for table in summary_tables(detail, jobs, watcher, "http://127.0.0.1:8000", 181.0):
        console.print(table)
    text = console.export_text()
    for expected in (
        "COMPLETED",
        "100/100",
        "3 (2 automatic resumptions, 0 killed at the time limit)",
        "42.0%",
        "6.5100 (first 9.4800)",
        "http://127.0.0.1:8000/runs/3",
        "step-80",
        "deadline_stop",
        "finished",
    ):
        assert expected in text, expected


def test_demo_help_explains_every_option() -> None:
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--keep-serving", "--data-dir", "--sample-dir", "--window", "--port", "./var"):
        assert option in result.output, option


# ------------------------------------------------------------------------------ end to end
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
