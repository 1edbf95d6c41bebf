"""What the pages show, as plain dataclasses, and the pure rules that derive it.

The templates see only these objects: the DB models can change shape without touching a
template, and every derived number (ETA, restarts by cause, the attempt timeline) is a pure
function with a unit test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shared.states import FATAL_END_REASONS, EndReason, RunState

if TYPE_CHECKING:
    from controller.auth import Principal
    from controller.web.runspec import ConfigGroup

# End reasons that mean something went wrong (shown in red); the rest are planned stops.
BAD_REASONS = frozenset(
    {
        EndReason.TIMEOUT_KILLED,
        EndReason.PREEMPTED,
        EndReason.NODE_FAIL,
        EndReason.FAILED,
        EndReason.LOST,
        EndReason.HUNG,
        EndReason.DIVERGED,
        *FATAL_END_REASONS,
    }
)

Action = Literal["cancel", "resume", "checkpoint", "stop"]
ACTIONS: tuple[Action, ...] = ("cancel", "resume", "checkpoint", "stop")


def allowed_actions(state: str) -> tuple[Action, ...]:
    """The buttons a run in ``state`` offers (the API still decides; this only hides nonsense)."""
    match RunState(state):
        case RunState.RUNNING:
            return ("checkpoint", "stop", "cancel")
        case RunState.PENDING | RunState.QUEUED:
            return ("cancel",)
        case RunState.FAILED | RunState.CANCELLED:
            return ("resume",)
        case _:
            return ()


NOT_RESTARTS = frozenset({EndReason.FINISHED, EndReason.CANCELLED})
"""End reasons that are no restart: the run was done, or a user stopped it (a cancel ends the run;
resuming it later is the user's choice, not a recovery)."""


def restarts_by_cause(end_reasons: Iterable[str | None]) -> list[tuple[str, int]]:
    """Ended attempts the controller had to follow with another one, counted by end reason, most
    frequent first: every end but a finish or a cancel."""
    counts = Counter(r for r in end_reasons if r and r not in NOT_RESTARTS)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def eta_seconds(step: int, total: int, seconds_per_step: float | None, state: str) -> float | None:
    """Time to train the remaining steps at the recent pace; None when not running or unknown."""
    if state != RunState.RUNNING or not seconds_per_step or seconds_per_step <= 0 or total <= 0:
        return None
    return max(0, total - step) * seconds_per_step


@dataclass(frozen=True, kw_only=True)
class Viewer:
    """Who is looking, and what they may do (see :mod:`controller.web.access`)."""

    logged_in: bool
    name: str | None
    auth_required: bool
    can_view: bool
    """May see pages at all (which runs: ``controller/access.py``)."""
    can_act: bool
    """May create runs and act on the runs ``controller/access.py`` lets them act on."""
    principal: Principal | None = None
    """Whom the access rules see; ``None``: nobody (not signed in)."""

    @classmethod
    def anonymous(cls, *, auth_required: bool = True) -> Viewer:
        return cls(logged_in=False, name=None, auth_required=auth_required, can_view=False, can_act=False)


@dataclass(frozen=True, kw_only=True)
class RunRow:
    id: int
    name: str
    state: str
    step: int
    total_steps: int
    eta_seconds: float | None
    attempts: int
    restarts: list[tuple[str, int]]
    goodput: float | None
    updated_at: Any


@dataclass(frozen=True, kw_only=True)
class RunsPage:
    rows: list[RunRow]
    state: str | None
    counts: list[tuple[str, int]]
    total: int
    newer_url: str | None
    older_url: str | None


@dataclass(frozen=True, kw_only=True)
class AttemptTimes:
    """One attempt as the timeline needs it; times in Unix seconds."""

    number: int
    backend: str
    external_id: str | None
    state: str
    end_reason: str | None
    submitted_at: float | None
    started_at: float | None
    stopping_at: float | None
    ended_at: float | None
    step_at_start: int | None
    step_at_end: int | None
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Segment:
    kind: Literal["queue", "run", "save"]
    label: str
    left: float
    """Percent of the timeline's width."""
    width: float
    seconds: float


@dataclass(frozen=True, kw_only=True)
class TimelineRow:
    number: int
    backend: str
    external_id: str | None
    state: str
    end_reason: str | None
    submitted_at: float | None
    step_at_start: int | None
    step_at_end: int | None
    error: str | None
    queue_seconds: float | None
    run_seconds: float | None
    save_seconds: float | None
    segments: list[Segment] = field(default_factory=list)


def timeline(attempts: list[AttemptTimes], now: float) -> list[TimelineRow]:
    """Attempts on one shared time axis: queue wait, running, then the final save.

    Queue wait is submit → start; running is start → the worker's stop announcement (or the end);
    final save is announcement → end. An attempt still going is drawn up to ``now``. The axis spans
    the first submission to the last end (or ``now``), so gaps between attempts show as well.
    """
    known = [a.submitted_at for a in attempts if a.submitted_at is not None]
    if not known:
        return [_row(a, [], None, None, None) for a in attempts]
    t0 = min(known)
    t1 = max([now if a.ended_at is None else a.ended_at for a in attempts] + [t0])
    span = max(t1 - t0, 1e-9)

    def seg(kind: Literal["queue", "run", "save"], label: str, start: float, end: float) -> Segment:
        return Segment(
            kind=kind,
            label=label,
            left=100.0 * (start - t0) / span,
            width=100.0 * max(end - start, 0.0) / span,
            seconds=max(end - start, 0.0),
        )

    rows = []
    for a in attempts:
        if a.submitted_at is None:
            rows.append(_row(a, [], None, None, None))
            continue
        end = now if a.ended_at is None else a.ended_at
        segments = []
        queue = run = save = None
        queue_end = a.started_at if a.started_at is not None else end
        queue = queue_end - a.submitted_at
        segments.append(seg("queue", "queue wait", a.submitted_at, queue_end))
        if a.started_at is not None:
            run_end = a.stopping_at if a.stopping_at is not None else end
            run = run_end - a.started_at
            segments.append(seg("run", "running", a.started_at, run_end))
            if a.stopping_at is not None:
                save = end - a.stopping_at
                segments.append(seg("save", "final save", a.stopping_at, end))
        rows.append(_row(a, segments, queue, run, save))
    return rows


def _row(
    a: AttemptTimes, segments: list[Segment], queue: float | None, run: float | None, save: float | None
) -> TimelineRow:
    return TimelineRow(
        number=a.number,
        backend=a.backend,
        external_id=a.external_id,
        state=a.state,
        end_reason=a.end_reason,
        submitted_at=a.submitted_at,
        step_at_start=a.step_at_start,
        step_at_end=a.step_at_end,
        error=a.error,
        queue_seconds=queue,
        run_seconds=run,
        save_seconds=save,
        segments=segments,
    )


@dataclass(frozen=True, kw_only=True)
class CheckpointRow:
    step: int
    path: str
    size_bytes: int | None
    save_seconds: float | None
    async_save: bool
    final: bool
    attempt: int | None
    deleted_at: Any = None
    """When the worker's retention deleted it (``None``: on disk)."""

    @property
    def on_disk(self) -> bool:
        return self.deleted_at is None


@dataclass(frozen=True, kw_only=True)
class EventRow:
    time: Any
    kind: str
    message: str
    detail: str = ""
    """Shown folded under the message: a hung event's first lines of the stack dump."""


@dataclass(frozen=True, kw_only=True)
class ExclusionRow:
    """A host the run's next attempts keep off, and until when."""

    host: str
    reason: str
    attempt: int
    expires_at: Any


@dataclass(frozen=True, kw_only=True)
class LedgerPart:
    category: str
    seconds: float
    fraction: float
    """Of the run's wall time (the bar's width)."""


def ledger_parts(ledger: dict[str, float]) -> list[LedgerPart]:
    """The ledger as bar segments in its category order, leaving out empty ones."""
    wall = sum(ledger.values())
    if wall <= 0:
        return []
    return [LedgerPart(category=k, seconds=v, fraction=v / wall) for k, v in ledger.items() if v > 0]


@dataclass(frozen=True, kw_only=True)
class RunDetail:
    id: int
    name: str
    state: str
    step: int
    total_steps: int
    eta_seconds: float | None
    attempts: int
    restarts: list[tuple[str, int]]
    goodput: float | None
    updated_at: Any
    last_loss: float | None
    latest_checkpoint_step: int | None
    message: str | None
    config: list[ConfigGroup]
    """The spec, grouped (``controller/web/runspec.py``); the YAML download is its raw form."""
    timeline: list[TimelineRow]
    checkpoints: list[CheckpointRow]
    events: list[EventRow]
    cancel_requested: bool = False
    pending_action: str = "none"
    """A checkpoint/stop request the worker has not picked up yet (delivered with its next report)."""
    ledger: list[LedgerPart] = field(default_factory=list)
    """Where the run's wall time went (``controller.services.goodput.run_ledger``), non-empty parts."""
    owner: str = ""
    can_act: bool = True
    exclusions: list[ExclusionRow] = field(default_factory=list)
    """Whether the viewer may act on this run (a viewer, or a reader of all runs, may not)."""
    tokens_seen: int = 0
    checkpoints_on_disk: int = 0
    checkpoints_total: int = 0
    """Every checkpoint row of the run (the table shows the newest ``CHECKPOINTS_SHOWN``)."""

    @property
    def wall_seconds(self) -> float:
        """Created → finished (or now): the ledger's total."""
        return sum(part.seconds for part in self.ledger)

    @property
    def loss_label(self) -> str:
        return "final loss" if self.state == RunState.COMPLETED else "last loss"

    @property
    def allowed_actions(self) -> tuple[Action, ...]:
        if not self.can_act:
            return ()
        actions = allowed_actions(self.state)
        if self.cancel_requested:  # the reconciler is ending the live attempt: nothing more to ask
            return tuple(a for a in actions if a == "resume")
        return actions
