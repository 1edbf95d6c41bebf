"""``GET /metrics``: Prometheus text format (version 0.0.4), rendered from the database plus the
in-process report-latency histogram."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run
from controller.services import goodput
from shared.states import EndReason, RunState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """A thread-safe cumulative histogram (seconds)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            index = next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))
            self._counts[index] += 1
            self._sum += seconds

    def lines(self, name: str) -> list[str]:
        with self._lock:
            counts, total_sum = list(self._counts), self._sum
        out, running = [], 0
        for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
            running += count
            le = "+Inf" if bound == math.inf else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {total_sum!r}", f"{name}_count {running}"]
        return out


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def render(session: Session, latency: LatencyHistogram, *, now: datetime, events: dict[str, int]) -> str:
    lines: list[str] = []
    by_state: dict[RunState, int] = {
        state: count for state, count in session.execute(select(Run.state, func.count()).group_by(Run.state))
    }
    lines += _family("pyrecover_runs", "gauge", "Runs by state.")
    lines += [f'pyrecover_runs{{state="{s.value}"}} {int(by_state.get(s, 0))}' for s in RunState]
    ended = select(Attempt.end_reason, func.count()).where(Attempt.end_reason.is_not(None))
    reasons: dict[EndReason | None, int] = {
        reason: count for reason, count in session.execute(ended.group_by(Attempt.end_reason))
    }
    lines += _family("pyrecover_attempts_ended_total", "counter", "Ended attempts by end reason.")
    lines += [
        f'pyrecover_attempts_ended_total{{end_reason="{r.value}"}} {int(reasons.get(r, 0))}'
        for r in EndReason
    ]
    resubmissions = session.scalar(select(func.count()).select_from(Attempt).where(Attempt.number > 1))
    lines += _family("pyrecover_resubmissions_total", "counter", "Attempts after a run's first.")
    lines.append(f"pyrecover_resubmissions_total {int(resubmissions or 0)}")
    lines += _family(
        "pyrecover_missed_deadlines_total", "counter", "Attempts killed at their time limit (goal: zero)."
    )
    lines.append(f"pyrecover_missed_deadlines_total {int(reasons.get(EndReason.TIMEOUT_KILLED, 0))}")
    total = goodput.overall(session, now=now)
    lines += _family("pyrecover_allocated_seconds", "gauge", "Seconds attempts held resources (all runs).")
    lines.append(f"pyrecover_allocated_seconds {total.allocated_s!r}")
    lines += _family(
        "pyrecover_productive_committed_seconds",
        "gauge",
        "Seconds of training that ended in a committed checkpoint.",
    )
    lines.append(f"pyrecover_productive_committed_seconds {total.productive_committed_s!r}")
    lines += _family("pyrecover_goodput_ratio", "gauge", "Productive committed seconds / allocated seconds.")
    lines.append(f"pyrecover_goodput_ratio {total.goodput if total.goodput is not None else 0.0!r}")
    lines += _family(
        "pyrecover_run_seconds", "gauge", "Wall time of all runs by where it went (the goodput ledger)."
    )
    ledger = goodput.overall_ledger(session, now=now)
    lines += [f'pyrecover_run_seconds{{category="{k}"}} {v!r}' for k, v in ledger.items()]
    lines += _family("pyrecover_report_events_total", "counter", "Worker events received, by outcome.")
    lines += [f'pyrecover_report_events_total{{outcome="{k}"}} {v}' for k, v in sorted(events.items())]
    lines += _family("pyrecover_report_latency_seconds", "histogram", "Time to ingest one report batch.")
    lines += latency.lines("pyrecover_report_latency_seconds")
    return "\n".join(lines) + "\n"
