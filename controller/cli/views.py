"""Rich renderings of API replies (``RunPublic``, ``AttemptPublic``) for ``show``, ``runs``, ``demo``."""

from __future__ import annotations

from typing import Any

from rich.panel import Panel
from rich.table import Table


def run_progress(run: dict[str, Any]) -> tuple[int, int]:
    """(current step, training steps) of a ``RunPublic`` reply."""
    return int(run.get("current_step") or 0), int(run.get("training_steps") or 0)


def _fmt_time(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return text.replace("T", " ")[:19]


def attempts_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table("#", "job", "state", "end reason", "steps", "start", "end", "error", title="attempts")
    for job in jobs:
        start, end = job.get("step_at_start"), job.get("step_at_end")
        table.add_row(
            str(job.get("number", "")),
            str(job.get("external_id") or ""),
            str(job.get("state", "")),
            str(job.get("end_reason") or ""),
            f"{start if start is not None else ''}→{end if end is not None else ''}",
            _fmt_time(job.get("start_time") or job.get("submit_time")),
            _fmt_time(job.get("end_time")),
            str(job.get("error") or "")[:80],
        )
    return table


def run_panel(run: dict[str, Any]) -> Panel:
    step, total = run_progress(run)
    lines = [
        f"[bold]{run.get('name')}[/] (id {run.get('id')})   state [bold]{run.get('state')}[/]",
        f"progress   {step}/{total} steps",
    ]
    goodput = run.get("goodput")
    if isinstance(goodput, int | float):
        lines.append(f"goodput    {goodput:.1%}")
    ckpt = run.get("latest_checkpoint_step")
    if ckpt is not None:
        lines.append(f"checkpoint step {ckpt} (latest committed)")
    error = run.get("last_error")
    if error:
        lines.append(f"[red]error      {error}[/]")
    return Panel("\n".join(lines), expand=False)
