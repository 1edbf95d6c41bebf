"""Worker → controller reports (``POST /api/v1/runs/{id}/reports``) and the controller's reply.

Each event carries ``seq``, increasing per (run, attempt) from 0; the controller stores an event
at most once per (run, attempt, seq), which makes a retried batch (or a spooled one delivered
late) change nothing twice.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import DivergenceReason, EventType, HangPhase, StopReason, WorkerAction

__all__ = [
    "CheckpointCommittedEvent",
    "DataCursor",
    "DivergedEvent",
    "FailedEvent",
    "FinishedEvent",
    "HungEvent",
    "HungRank",
    "ProgressEvent",
    "ReportBatch",
    "ReportReply",
    "StartedEvent",
    "StopReason",
    "StoppingEvent",
    "WarningEvent",
    "WorkerAction",
    "WorkerEvent",
]


_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_Text = Annotated[str, Field(max_length=256, pattern=_NO_CONTROL)]
_Seconds = Annotated[float, Field(ge=0, le=10 * 366 * 86_400.0, allow_inf_nan=False)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: Annotated[int, Field(ge=0)]
    time: float = Field(description="Unix seconds when the worker produced the event.")
    step: Annotated[int, Field(ge=0)]


class StartedEvent(_Event):
    type: Literal[EventType.STARTED] = EventType.STARTED
    world_size: Annotated[int, Field(ge=1)]
    resumed_from: str | None = None
    resume_step: Annotated[int, Field(ge=0)] = 0
    checkpoint_load_seconds: Annotated[float, Field(ge=0)] = 0.0
    startup_seconds: Annotated[float, Field(ge=0)] = 0.0
    deadline: float | None = None
    training_steps: Annotated[int, Field(ge=1)] | None = None


class ProgressEvent(_Event):
    type: Literal[EventType.PROGRESS] = EventType.PROGRESS
    loss: float
    lr: float
    tokens_seen: Annotated[int, Field(ge=0)]
    tokens_per_s: Annotated[float, Field(ge=0)] = 0.0
    step_time: Annotated[float, Field(ge=0)] = 0.0
    grad_norm: float | None = None
    mfu: float | None = None
    skipped_steps: Annotated[int, Field(ge=0, le=_INT32)] = 0
    """Updates skipped so far in this attempt because the loss or gradient norm was non-finite."""


class CheckpointCommittedEvent(_Event):
    type: Literal[EventType.CHECKPOINT_COMMITTED] = EventType.CHECKPOINT_COMMITTED
    path: str
    format: Literal["dcp", "vanilla"]
    size_bytes: Annotated[int, Field(ge=0)]
    save_seconds: Annotated[float, Field(ge=0)]
    stall_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Time the training loop was blocked."
    )
    async_save: bool = False
    tokens_seen: Annotated[int, Field(ge=0)] = 0
    final: bool = False


class StoppingEvent(_Event):
    type: Literal[EventType.STOPPING] = EventType.STOPPING
    reason: StopReason
    deadline: float | None = None


class FinishedEvent(_Event):
    type: Literal[EventType.FINISHED] = EventType.FINISHED


class FailedEvent(_Event):
    type: Literal[EventType.FAILED] = EventType.FAILED
    error: Annotated[str, Field(max_length=8000)]


class WarningEvent(_Event):
    """Something the user should see on the run (e.g. a corrupt checkpoint that was skipped)."""

    type: Literal[EventType.WARNING] = EventType.WARNING
    kind: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=8000)]


class HungRank(BaseModel):
    """One rank as its heartbeat showed it when a watchdog gave up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: Annotated[int, Field(ge=0, le=_INT32)]
    host: _Text
    phase: HangPhase | None = None
    step: Annotated[int, Field(ge=0, le=_INT32)] | None = None
    doing: _Text = ""
    """The finer activity inside the phase (``reading data``, ``computing``) where known."""
    heartbeat_age_seconds: _Seconds | None = None
    """How old its last heartbeat was (None: it never wrote one)."""
    reason: _Text
    """Why it is suspected: ``not running`` (no heartbeat: stopped, frozen or its node is gone),
    ``stuck reading data``, ``behind`` (in an earlier step or phase than the others), ``hung``."""


class HungEvent(_Event):
    """A watchdog saw no progress for longer than the phase allows; ``suspects`` names who stalled."""

    type: Literal[EventType.HUNG] = EventType.HUNG
    phase: HangPhase
    rank: Annotated[int, Field(ge=0, le=_INT32)]
    """The rank reporting (rank 0, or the lowest rank still running when rank 0 is not)."""
    host: _Text
    stalled_seconds: _Seconds
    limit_seconds: _Seconds
    suspects: Annotated[list[HungRank], Field(max_length=64)] = Field(default_factory=list)
    """The ranks that stalled the job (empty when every rank waits on every other: a deadlock)."""
    stacks_path: Annotated[str, Field(max_length=4096, pattern=_NO_CONTROL)] | None = None
    """Where the reporting rank's stack dump was written (it is also in the attempt's log)."""
    stacks_excerpt: Annotated[str, Field(max_length=4000)] = ""
    """The first lines of that dump."""


_Count = Annotated[int, Field(ge=0, le=_INT64)]


class DataCursor(BaseModel):
    """A data stream position (the dataset's ``state_dict()``, ``worker.data.iterable.Cursor``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunks_consumed: _Count
    """Global samples consumed since the start of the run: what ``--data-skip-to`` takes."""
    version: _Count | None = None
    epoch: _Count | None = None
    file_index: _Count | None = None
    row_index: _Count | None = None
    token_offset: _Count | None = None


class DivergedEvent(_Event):
    """The run diverged at ``step``; nothing after ``committed_step`` was committed."""

    type: Literal[EventType.DIVERGED] = EventType.DIVERGED
    reason: DivergenceReason
    message: Annotated[str, Field(max_length=2000)]
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """The step's loss where finite (None: NaN/inf)."""
    loss_median: Annotated[float, Field(allow_inf_nan=False)] | None = None
    skipped_steps: Annotated[int, Field(ge=0, le=_INT32)] = 0
    """Updates skipped in a row when it stopped."""
    committed_step: Annotated[int, Field(ge=0, le=_INT32)] | None = None
    """The newest checkpoint this attempt knows committed (resumed from or saved); None: none."""
    committed_cursor: DataCursor | None = None
    """The data cursor of ``committed_step``'s checkpoint: the start of the suspect window."""
    cursor: DataCursor
    """The data cursor after the batch of ``step``: the end of the window. A rollback resumes from
    ``committed_step`` with ``--data-skip-to <cursor.chunks_consumed>``."""


WorkerEvent = Annotated[
    StartedEvent
    | ProgressEvent
    | CheckpointCommittedEvent
    | StoppingEvent
    | FinishedEvent
    | FailedEvent
    | WarningEvent
    | HungEvent
    | DivergedEvent,
    Field(discriminator="type"),
]


class ReportBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: Annotated[int, Field(ge=1)]
    events: Annotated[list[WorkerEvent], Field(min_length=1, max_length=1000)]


class ReportReply(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events already stored earlier (retries); ignored.")
    action: WorkerAction = Field(
        default=WorkerAction.NONE, description="What the controller asks the worker to do next."
    )
