"""Read queries behind the pages. Each takes a session and never commits (the caller owns it).

The runs page must stay fast with 10,000 runs: it reads one page of runs by keyset on the
primary key (``id < before``, newest first), then the attempts and latest metric of just those
runs in one grouped query each; counting runs per state is one ``GROUP BY`` over the state index.
Nothing here loads a whole table. Which runs a page may show is decided by the caller
(``controller/access.py``) and handed in as a filter (``visible``); counts are of those runs only.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Checkpoint, Event, Metric, Run, User
from controller.db.types import to_datetime
from controller.services import goodput
from controller.services.exclusions import active_exclusions
from controller.web.formatting import to_unix
from controller.web.runspec import config_groups, shown_spec
from controller.web.views import (
    AttemptTimes,
    CheckpointRow,
    EventRow,
    ExclusionRow,
    RunDetail,
    RunRow,
    RunsPage,
    eta_seconds,
    ledger_parts,
    restarts_by_cause,
    timeline,
)
from shared.states import RunState

EVENTS_SHOWN = 200
CHECKPOINTS_SHOWN = 200


def _counts(session: Session, visible: ColumnElement[bool] | None) -> tuple[list[tuple[str, int]], int]:
    query = select(Run.state, func.count())
    if visible is not None:
        query = query.where(visible)
    rows: dict[str, int] = {str(s): int(n) for s, n in session.execute(query.group_by(Run.state))}
    counts = [(str(s), int(rows.get(s, 0))) for s in RunState]
    return counts, sum(c for _, c in counts)


def runs_page(
    session: Session,
    *,
    state: RunState | None,
    before: int | None,
    after: int | None,
    limit: int,
    now: float,
    base_url: str,
    visible: ColumnElement[bool] | None = None,
) -> RunsPage:
    """One page of runs, newest first, by keyset on id: ``before`` pages older, ``after`` newer.
    ``visible``: only the runs the viewer may read (``None``: all)."""
    query = select(Run)
    if visible is not None:
        query = query.where(visible)
    if state is not None:
        query = query.where(Run.state == state)
    if after is not None:
        # The page just above ``after``: read upwards, then show newest first.
        runs = list(session.scalars(query.where(Run.id > after).order_by(Run.id.asc()).limit(limit)))[::-1]
    else:
        if before is not None:
            query = query.where(Run.id < before)
        runs = list(session.scalars(query.order_by(Run.id.desc()).limit(limit)))
    rows = _rows(session, runs, now)
    counts, total = _counts(session, visible)

    def url(**params: int) -> str:
        return f"{base_url}?{urlencode(({'state': str(state)} if state else {}) | params)}"

    newer = older = None
    if runs:
        base = select(Run.id)
        if visible is not None:
            base = base.where(visible)
        if state is not None:
            base = base.where(Run.state == state)
        if session.scalar(base.where(Run.id > runs[0].id).limit(1)) is not None:
            newer = url(after=runs[0].id)
        if session.scalar(base.where(Run.id < runs[-1].id).limit(1)) is not None:
            older = url(before=runs[-1].id)
    return RunsPage(
        rows=rows,
        state=str(state) if state else None,
        counts=counts,
        total=total,
        newer_url=newer,
        older_url=older,
    )


def _rows(session: Session, runs: list[Run], now: float) -> list[RunRow]:
    if not runs:
        return []
    ids = [r.id for r in runs]
    reasons: dict[int, list[str | None]] = {i: [] for i in ids}
    attempts: dict[int, int] = dict.fromkeys(ids, 0)
    for run_id, reason, n in session.execute(
        select(Attempt.run_id, Attempt.end_reason, func.count())
        .where(Attempt.run_id.in_(ids))
        .group_by(Attempt.run_id, Attempt.end_reason)
    ):
        attempts[run_id] += n
        reasons[run_id] += [reason] * n
    pace = _recent_pace(session, runs)
    figures = goodput.for_runs(session, ids, now=_at(now))
    rows = []
    for run in runs:
        step, total = _progress(run)
        rows.append(
            RunRow(
                id=run.id,
                name=run.name,
                state=str(run.state),
                step=step,
                total_steps=total,
                eta_seconds=eta_seconds(step, total, pace.get(run.id), str(run.state)),
                attempts=attempts[run.id],
                restarts=restarts_by_cause(reasons[run.id]),
                goodput=figures[run.id].goodput,
                updated_at=run.updated_at,
            )
        )
    return rows


def _newest_metric(session: Session, run_id: int) -> tuple[float | None, float | None]:
    """(loss, seconds per step) of the run's newest point: one lookup on the (run_id, step) index."""
    row = session.execute(
        select(Metric.loss, Metric.step_time)
        .where(Metric.run_id == run_id)
        .order_by(Metric.step.desc(), Metric.id.desc())
        .limit(1)
    ).first()
    return (None, None) if row is None else (row[0], row[1])


def _recent_pace(session: Session, runs: list[Run]) -> dict[int, float]:
    """Seconds per step at the newest point of each RUNNING run (the only ones with an ETA).

    One query for the whole page: the newest step per run comes from the (run_id, step) index.
    """
    ids = [run.id for run in runs if run.state == RunState.RUNNING]
    if not ids:
        return {}
    newest = (
        select(Metric.run_id.label("run_id"), func.max(Metric.step).label("step"))
        .where(Metric.run_id.in_(ids))
        .group_by(Metric.run_id)
        .subquery()
    )
    rows = session.execute(
        select(Metric.run_id, Metric.step_time).join(
            newest, (Metric.run_id == newest.c.run_id) & (Metric.step == newest.c.step)
        )
    )
    return {int(run_id): float(t) for run_id, t in rows if t}


def _progress(run: Run) -> tuple[int, int]:
    return int(run.current_step or 0), int(run.training_steps or 0)


def _at(now: float) -> datetime:
    at = to_datetime(now)
    assert at is not None
    return at


def _attempt_times(session: Session, run_id: int) -> list[AttemptTimes]:
    attempts = session.scalars(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.number))
    return [
        AttemptTimes(
            number=a.number,
            backend=a.backend,
            external_id=a.external_id,
            state=str(a.state),
            end_reason=a.end_reason,
            submitted_at=to_unix(a.submit_time),
            started_at=to_unix(a.start_time),
            stopping_at=to_unix(a.stopping_time),
            ended_at=to_unix(a.end_time),
            step_at_start=a.step_at_start,
            step_at_end=a.step_at_end,
            error=a.error,
        )
        for a in attempts
    ]


def run_detail(session: Session, run: Run, *, now: float, can_act: bool = True) -> RunDetail:
    """Everything the run page shows (the caller checked that the viewer may read ``run``)."""
    run_id = run.id
    attempts = _attempt_times(session, run_id)
    step, total = _progress(run)
    last_loss, pace = _newest_metric(session, run_id)
    checkpoints = [
        CheckpointRow(
            step=c.step,
            path=c.path,
            size_bytes=c.size_bytes,
            save_seconds=c.save_seconds,
            async_save=bool(c.async_save),
            final=bool(c.final),
            attempt=c.attempt,
            deleted_at=c.deleted_at,
        )
        for c in session.scalars(
            select(Checkpoint)
            .where(Checkpoint.run_id == run_id)
            .order_by(Checkpoint.step.desc())
            .limit(CHECKPOINTS_SHOWN)
        )
    ]
    counts = session.execute(
        select(func.count(), func.count(Checkpoint.id).filter(Checkpoint.deleted_at.is_(None))).where(
            Checkpoint.run_id == run_id
        )
    ).one()
    events = [
        EventRow(time=e.time, kind=e.kind, message=e.message or "", detail=_event_detail(e))
        for e in session.scalars(
            select(Event).where(Event.run_id == run_id).order_by(Event.id.desc()).limit(EVENTS_SHOWN)
        )
    ]
    return RunDetail(
        id=run.id,
        name=run.name,
        state=str(run.state),
        step=step,
        total_steps=total,
        eta_seconds=eta_seconds(step, total, pace, str(run.state)),
        attempts=len(attempts),
        restarts=restarts_by_cause(a.end_reason for a in attempts if a.ended_at is not None),
        goodput=goodput.for_runs(session, [run.id], now=_at(now))[run.id].goodput,
        ledger=ledger_parts(goodput.ledgers(session, [run.id], now=_at(now))[run.id]),
        updated_at=run.updated_at,
        last_loss=last_loss,
        latest_checkpoint_step=run.latest_checkpoint_step,  # never a deleted one (checkpoint_retention)
        message=run.last_error,
        config=config_groups(shown_spec(run.spec)),
        timeline=timeline(attempts, now),
        checkpoints=checkpoints,
        events=events,
        cancel_requested=bool(run.cancel_requested),
        pending_action=str(run.pending_action or "none"),
        owner=session.scalar(select(User.name).where(User.id == run.owner_id)) or "",
        can_act=can_act,
        tokens_seen=int(run.tokens_seen or 0),
        checkpoints_total=int(counts[0]),
        checkpoints_on_disk=int(counts[1]),
        exclusions=[
            ExclusionRow(host=e.host, reason=e.reason, attempt=e.attempt, expires_at=e.expires_at)
            for e in active_exclusions(session, run_id, now=_at(now))
        ],
    )


_COPY_SUFFIX = re.compile(r"^(?P<base>.+?)-(?P<n>\d{1,4})$")


def free_name(session: Session, name: str) -> str:
    """A name for a copy of the run ``name`` that no run has yet: ``name-2`` (``x-2`` → ``x-3``), in
    one query over the next candidates; the names stay valid run names (at most 63 characters)."""
    match = _COPY_SUFFIX.fullmatch(name)
    base, first = (match["base"], int(match["n"]) + 1) if match else (name, 2)
    candidates = [f"{base[: 62 - len(str(n))]}-{n}" for n in range(first, first + 50)]
    taken = set(session.scalars(select(Run.name).where(Run.name.in_(candidates))))
    return next((c for c in candidates if c not in taken), candidates[-1])


def mfu_measured(session: Session, run_id: int) -> bool:
    """Whether any metric point of the run carries an MFU. The worker reports one only where it knows
    the device's peak FLOP/s (never on CPU); elsewhere the run page hides the MFU chart and says why,
    instead of a chart that waits for data for ever."""
    stmt = select(Metric.id).where(Metric.run_id == run_id, Metric.mfu.is_not(None)).limit(1)
    return session.scalar(stmt) is not None


def _event_detail(event: Event) -> str:
    """What the run page folds under an event's message: the first lines of a hung rank's stacks
    (the worker's own text: escaped by the template like every other value)."""
    data = event.data if isinstance(event.data, dict) else {}
    excerpt = data.get("stacks_excerpt") if event.kind == "hung" else None
    return excerpt[:4000] if isinstance(excerpt, str) else ""
