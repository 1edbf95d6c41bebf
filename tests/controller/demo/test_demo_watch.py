"""``controller.demo.watch``: one clear line per automatic resumption, and the summary's content."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from controller.demo.watch import Watcher, summary_tables


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
