"""Goodput accounting: how much of the time a run held resources ended up in a committed checkpoint.

Per attempt (seconds):

* ``allocated``: start → end (→ now while running): what the cluster gave us;
* ``queue_wait``: submit → start;
* ``startup`` and ``checkpoint_load``: as the worker reported them in ``started``;
* ``productive_committed``: training start (the ``started`` report) → the attempt's last committed
  checkpoint: work that survives the attempt;
* ``lost_work``: last commit (or training start) → end: work redone by the next attempt;
* ``checkpoint_stall``: time the training loop was blocked by saves.

Run goodput = Σ productive_committed / Σ allocated (``None`` before any time was allocated).

The **ledger** (``run_ledger``) splits a run's whole wall time (created → finished, or now) into
``LEDGER_CATEGORIES``, every second into exactly one:

* ``queue_wait``: before an attempt starts, from its submission (or the run's creation);
* ``resubmission_gap``: between an attempt's end and the next one's submission (the controller's
  decision, a backoff), and after the last attempt until the run ends;
* ``startup`` and ``checkpoint_load``: attempt start → training start (the load as reported);
* ``productive``: training start → the attempt's last committed checkpoint, save stalls excluded;
* ``save_stall``: the loop blocked by saves within that span (as reported, clipped to it);
* ``idle_tail``: after the last commit of an attempt that ended cleanly (final save done, the
  time left before the deadline, the exit);
* ``lost_work``: after the last commit of an attempt that ended badly (redone by the next one);
* ``hung``: for an attempt ended ``hung``, from its last report to its end;
* ``in_progress``: after the last commit of an attempt still running (not committed yet).

This module is the one owner of these figures: they are never stored, and the API
(``controller.api.presenters``), the dashboard (``controller.web.queries``) and ``/metrics``
(``controller.metrics``) all read them through ``for_runs`` / ``overall`` at the same ``now``, so
they cannot disagree. The arithmetic is pure (``attempt_goodput``, ``run_goodput``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Run
from shared.states import CLEAN_END_REASONS, EndReason

LEDGER_CATEGORIES = (
    "queue_wait",
    "resubmission_gap",
    "startup",
    "checkpoint_load",
    "productive",
    "save_stall",
    "idle_tail",
    "lost_work",
    "hung",
    "in_progress",
)


@dataclass(frozen=True, kw_only=True)
class AttemptGoodput:
    allocated_s: float = 0.0
    queue_wait_s: float = 0.0
    startup_s: float = 0.0
    checkpoint_load_s: float = 0.0
    productive_committed_s: float = 0.0
    lost_work_s: float = 0.0
    checkpoint_stall_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RunGoodput:
    allocated_s: float
    productive_committed_s: float
    lost_work_s: float
    queue_wait_s: float
    checkpoint_stall_s: float

    @property
    def goodput(self) -> float | None:
        return self.productive_committed_s / self.allocated_s if self.allocated_s > 0 else None


def _span(a: datetime | None, b: datetime | None) -> float:
    return max(0.0, (b - a).total_seconds()) if a is not None and b is not None else 0.0


def attempt_goodput(
    *,
    submit: datetime | None,
    start: datetime | None,
    end: datetime | None,
    training_started: datetime | None,
    last_commit: datetime | None,
    startup_s: float,
    checkpoint_load_s: float,
    checkpoint_stall_s: float,
    now: datetime,
) -> AttemptGoodput:
    """The goodput figures of one attempt; ``end`` is ``now`` while it still holds resources."""
    until = end or now
    # A worker may report before the scheduler's start time is known: then training start bounds it.
    begin = start or training_started
    productive = _span(training_started, last_commit) if last_commit is not None else 0.0
    work_end = last_commit if last_commit is not None else training_started
    return AttemptGoodput(
        allocated_s=_span(begin, until),
        queue_wait_s=_span(submit, begin),
        startup_s=startup_s,
        checkpoint_load_s=checkpoint_load_s,
        productive_committed_s=productive,
        lost_work_s=_span(work_end, until) if work_end is not None else 0.0,
        checkpoint_stall_s=checkpoint_stall_s,
    )


def of_attempt(attempt: Attempt, now: datetime) -> AttemptGoodput:
    return _of_row(attempt, now)


def run_goodput(attempts: Iterable[AttemptGoodput]) -> RunGoodput:
    items = list(attempts)
    return RunGoodput(
        allocated_s=sum(a.allocated_s for a in items),
        productive_committed_s=sum(a.productive_committed_s for a in items),
        lost_work_s=sum(a.lost_work_s for a in items),
        queue_wait_s=sum(a.queue_wait_s for a in items),
        checkpoint_stall_s=sum(a.checkpoint_stall_s for a in items),
    )


_INPUTS = (
    Attempt.run_id,
    Attempt.number,
    Attempt.end_reason,
    Attempt.last_report_at,
    Attempt.submit_time,
    Attempt.start_time,
    Attempt.end_time,
    Attempt.training_started_at,
    Attempt.last_commit_at,
    Attempt.startup_s,
    Attempt.checkpoint_load_s,
    Attempt.checkpoint_stall_s,
)


def _of_row(row: Any, now: datetime) -> AttemptGoodput:
    """The figures of one ``select(*_INPUTS)`` row (or an ``Attempt``: same attribute names)."""
    return attempt_goodput(
        submit=row.submit_time,
        start=row.start_time,
        end=row.end_time,
        training_started=row.training_started_at,
        last_commit=row.last_commit_at,
        startup_s=float(row.startup_s or 0.0),
        checkpoint_load_s=float(row.checkpoint_load_s or 0.0),
        checkpoint_stall_s=float(row.checkpoint_stall_s or 0.0),
        now=now,
    )


def for_runs(session: Session, run_ids: Sequence[int], *, now: datetime) -> dict[int, RunGoodput]:
    """Each run's goodput (every id present, zeros for a run without attempts): one query."""
    per_run: dict[int, list[AttemptGoodput]] = defaultdict(list)
    if run_ids:
        for row in session.execute(select(*_INPUTS).where(Attempt.run_id.in_(list(run_ids)))):
            per_run[int(row.run_id)].append(_of_row(row, now))
    return {run_id: run_goodput(per_run.get(run_id, [])) for run_id in run_ids}


def overall(session: Session, *, now: datetime) -> RunGoodput:
    """Goodput over every attempt of every run (``/metrics``)."""
    return run_goodput(_of_row(row, now) for row in session.execute(select(*_INPUTS)))


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def _clip(t: datetime | None, lo: datetime, hi: datetime) -> datetime:
    return lo if t is None else min(max(t, lo), hi)


def run_ledger(
    *, created: datetime, finished: datetime | None, attempts: Sequence[Any], now: datetime
) -> dict[str, float]:
    """Seconds per ``LEDGER_CATEGORIES`` entry; they add up to the run's wall time (see the module
    docstring). ``attempts``: rows with the ``Attempt`` attribute names, in any order."""
    out = dict.fromkeys(LEDGER_CATEGORIES, 0.0)
    end_of_run = max(finished or now, created)
    cursor = created  # everything before it is accounted for
    for row in sorted(attempts, key=lambda r: r.number):
        start_raw = row.start_time or row.training_started_at
        if start_raw is None:  # never ran: its time is still waiting, counted by what comes next
            continue
        start = _clip(start_raw, cursor, end_of_run)
        submit = _clip(row.submit_time, cursor, start)
        end = _clip(row.end_time or now, start, end_of_run)
        out["resubmission_gap" if cursor > created else "queue_wait"] += _seconds(cursor, submit)
        out["queue_wait"] += _seconds(submit, start)
        trained = _clip(row.training_started_at or end, start, end)
        load = min(float(row.checkpoint_load_s or 0.0), _seconds(start, trained))
        out["checkpoint_load"] += load
        out["startup"] += _seconds(start, trained) - load
        commit = _clip(row.last_commit_at, trained, end) if row.last_commit_at is not None else trained
        stall = min(float(row.checkpoint_stall_s or 0.0), _seconds(trained, commit))
        out["save_stall"] += stall
        out["productive"] += _seconds(trained, commit) - stall
        tail = _seconds(commit, end)
        reason = EndReason(row.end_reason) if row.end_reason else None
        if row.end_time is None:
            out["in_progress"] += tail
        elif reason in CLEAN_END_REASONS:
            out["idle_tail"] += tail
        elif reason is EndReason.HUNG:
            stalled_from = _clip(row.last_report_at, commit, end)
            out["lost_work"] += _seconds(commit, stalled_from)
            out["hung"] += _seconds(stalled_from, end)
        else:
            out["lost_work"] += tail
        cursor = end
    out["resubmission_gap" if cursor > created else "queue_wait"] += _seconds(cursor, end_of_run)
    return out


def ledgers(session: Session, run_ids: Sequence[int], *, now: datetime) -> dict[int, dict[str, float]]:
    """The ledger of each run: two queries for all of them."""
    return _ledgers(session, Run.id.in_(list(run_ids)), Attempt.run_id.in_(list(run_ids)), now)


def overall_ledger(session: Session, *, now: datetime) -> dict[str, float]:
    """The ledgers of every run, summed (``/metrics``)."""
    total = dict.fromkeys(LEDGER_CATEGORIES, 0.0)
    for ledger in _ledgers(session, None, None, now).values():
        for key, value in ledger.items():
            total[key] += value
    return total


def _ledgers(
    session: Session, run_filter: Any, attempt_filter: Any, now: datetime
) -> dict[int, dict[str, float]]:
    runs = select(Run.id, Run.created_at, Run.finished_at)
    rows = select(*_INPUTS)
    if run_filter is not None:
        runs, rows = runs.where(run_filter), rows.where(attempt_filter)
    per_run: dict[int, list[Any]] = defaultdict(list)
    for row in session.execute(rows):
        per_run[int(row.run_id)].append(row)
    return {
        int(run_id): run_ledger(created=created, finished=finished, attempts=per_run[int(run_id)], now=now)
        for run_id, created, finished in session.execute(runs)
    }
