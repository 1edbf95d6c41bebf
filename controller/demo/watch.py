"""Showing the demo run: a live progress bar, one line per automatic resumption (``Watcher``),
and the closing summary (``summary_tables``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from controller.cli.client import Api, items
from controller.cli.views import run_progress
from shared.states import TERMINAL_RUN_STATES

console = Console()


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
                if detail.get("state") in TERMINAL_RUN_STATES or time.monotonic() > end:
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
    goodput = detail.get("goodput")
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
