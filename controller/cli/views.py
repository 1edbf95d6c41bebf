"""Rich renderings of API replies shared by ``show``, ``runs`` and ``demo``."""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.table import Table


def pick(data: Any, *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present (and not None) in ``data``; dotted keys reach into nested dicts."""
    for key in keys:
        value: Any = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return default


def run_progress(run: dict[str, Any]) -> tuple[int, int]:
    """(committed or current step, training steps) of a run reply."""
    step = pick(run, "current_step", "progress.step", "step", default=0)
    total = pick(
        run,
        "training_steps",
        "progress.training_steps",
        "spec.training.training_steps",
        "training.training_steps",
        default=0,
    )
    return int(step or 0), int(total or 0)


def _fmt_time(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return text.replace("T", " ")[:19]


def attempts_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table("#", "job", "state", "end reason", "steps", "start", "end", "error", title="attempts")
    for job in jobs:
        start, end = pick(job, "step_at_start"), pick(job, "step_at_end")
        table.add_row(
            str(pick(job, "number", "attempt", default="")),
            str(pick(job, "external_id", "job_id", default="")),
            str(job.get("state", "")),
            str(job.get("end_reason") or ""),
            f"{start if start is not None else ''}→{end if end is not None else ''}",
            _fmt_time(pick(job, "start_time", "started_at", "submit_time", "submitted_at")),
            _fmt_time(pick(job, "end_time", "ended_at")),
            str(job.get("error") or "")[:80],
        )
    return table


def run_panel(run: dict[str, Any]) -> Panel:
    step, total = run_progress(run)
    lines = [
        f"[bold]{run.get('name')}[/] (id {run.get('id')})   state [bold]{run.get('state')}[/]",
        f"progress   {step}/{total} steps",
    ]
    goodput = pick(run, "goodput", "goodput.goodput")
    if isinstance(goodput, int | float):
        lines.append(f"goodput    {goodput:.1%}")
    ckpt = pick(run, "latest_checkpoint_step", "latest_checkpoint.step")
    if ckpt is not None:
        lines.append(f"checkpoint step {ckpt} (latest committed)")
    loss = pick(run, "last_loss", "loss")
    if isinstance(loss, int | float):
        lines.append(f"loss       {loss:.4f}")
    error = pick(run, "last_error", "error")
    if error:
        lines.append(f"[red]error      {error}[/]")
    return Panel("\n".join(lines), expand=False)
