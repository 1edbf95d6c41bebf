"""Worker → controller reports (``POST /api/v1/runs/{id}/reports``) and the controller's reply.

Each event carries ``seq``, increasing per (run, attempt) from 0; the controller stores an event
at most once per (run, attempt, seq), which makes a retried batch (or a spooled one delivered
late) change nothing twice.

The bounds are what the controller's columns hold (32/64-bit integers, a datetime's years, a
path without '..' or control characters): stated here, so the OpenAPI document says them and a
value past one is a 422 naming the field. What depends on the run (a step within its
``training_steps``, a checkpoint in its own directory) is checked by ``controller/services/claims.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import DivergenceReason, EventType, HangPhase, StopReason, WorkerAction
from shared.json_numbers import no_bool_numbers

INT32_MAX = 2**31 - 1
"""Steps, seqs and attempt numbers are ``INTEGER`` columns (32-bit on PostgreSQL)."""
INT64_MAX = 2**63 - 1
"""Tokens seen and checkpoint bytes are ``BIGINT``."""
MAX_UNIX_TIME = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the last second a ``datetime`` can hold."""
MAX_DURATION_S = 10 * 366 * 86_400.0
"""Start-up, load, save and stall times: ten years is already nonsense, but finite."""
MAX_PATH_CHARS = 4096
_SEGMENT = r"(?:\.*[^\x00-\x1f\x7f/\\.][^\x00-\x1f\x7f/\\]*|\.{3,}|\.?)"
REPORTED_PATH_PATTERN = rf"^{_SEGMENT}(?:[/\\]{_SEGMENT})*$"
"""A reported path: no control characters, no '..' component ('/' and '\\' both separate)."""

_Count32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
_Count64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
_Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]
_UnixTime = Annotated[float, Field(ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False)]
_Path = Annotated[str, Field(max_length=MAX_PATH_CHARS, pattern=REPORTED_PATH_PATTERN)]

__all__ = [
    "CheckpointCommittedEvent",
    "CheckpointsDeletedEvent",
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


_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_Text = Annotated[str, Field(max_length=256, pattern=_NO_CONTROL)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Every numeric field of the events below ("type" is the union's tag: no validator may run on it).
    _no_bool_numbers = field_validator(
        "seq", "time", "step", "world_size", "resume_step", "checkpoint_load_seconds", "startup_seconds",
        "deadline", "training_steps", "loss", "lr", "tokens_seen", "tokens_per_s", "step_time", "grad_norm",
        "mfu", "size_bytes", "save_seconds", "stall_seconds", "skipped_steps", "rank", "stalled_seconds",
        "limit_seconds", "loss_median", "committed_step",
        mode="before", check_fields=False,
    )(classmethod(no_bool_numbers))  # fmt: skip

    seq: _Count32
    time: _UnixTime = Field(description="Unix seconds when the worker produced the event.")
    step: _Count32


class StartedEvent(_Event):
    type: Literal[EventType.STARTED] = EventType.STARTED
    world_size: Annotated[int, Field(ge=1, le=INT32_MAX)]
    resumed_from: _Path | None = None
    resume_step: _Count32 = 0
    checkpoint_load_seconds: _Seconds = 0.0
    startup_seconds: _Seconds = 0.0
    deadline: _UnixTime | None = None
    training_steps: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None


class ProgressEvent(_Event):
    type: Literal[EventType.PROGRESS] = EventType.PROGRESS
    loss: float
    lr: float
    tokens_seen: _Count64
    tokens_per_s: Annotated[float, Field(ge=0)] = 0.0
    step_time: Annotated[float, Field(ge=0)] = 0.0
    grad_norm: float | None = None
    mfu: float | None = None
    skipped_steps: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    """Updates skipped so far in this attempt because the loss or gradient norm was non-finite."""


class CheckpointCommittedEvent(_Event):
    type: Literal[EventType.CHECKPOINT_COMMITTED] = EventType.CHECKPOINT_COMMITTED
    path: _Path
    format: Literal["dcp", "vanilla"]
    size_bytes: _Count64
    save_seconds: _Seconds
    stall_seconds: _Seconds = Field(default=0.0, description="Time the training loop was blocked.")
    async_save: bool = False
    tokens_seen: _Count64 = 0
    final: bool = False


MAX_STEP = 2**31 - 1
"""Steps are ``INTEGER`` columns (32-bit on PostgreSQL)."""


class CheckpointsDeletedEvent(_Event):
    """Retention removed these committed checkpoints from disk (``step``: the commit that made them
    surplus). Rank 0 reports each deletion once; the controller marks the rows, never removes them."""

    type: Literal[EventType.CHECKPOINTS_DELETED] = EventType.CHECKPOINTS_DELETED
    steps: Annotated[list[Annotated[int, Field(ge=0, le=MAX_STEP)]], Field(min_length=1, max_length=10_000)]


class StoppingEvent(_Event):
    type: Literal[EventType.STOPPING] = EventType.STOPPING
    reason: StopReason
    deadline: _UnixTime | None = None


class FinishedEvent(_Event):
    type: Literal[EventType.FINISHED] = EventType.FINISHED


class FailedEvent(_Event):
    type: Literal[EventType.FAILED] = EventType.FAILED
    error: Annotated[str, Field(max_length=8000)]
    host: _Text | None = None
    """The host the failure is pinned on (a CUDA/NCCL fault, ``shared.exclusions.pins_host``):
    the controller keeps the run's next attempts off it."""


class WarningEvent(_Event):
    """Something the user should see on the run (e.g. a corrupt checkpoint that was skipped)."""

    type: Literal[EventType.WARNING] = EventType.WARNING
    kind: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=8000)]


class HungRank(BaseModel):
    """One rank as its heartbeat showed it when a watchdog gave up."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _no_bool_numbers = field_validator("rank", "step", "heartbeat_age_seconds", mode="before")(
        classmethod(no_bool_numbers)
    )

    rank: Annotated[int, Field(ge=0, le=INT32_MAX)]
    host: _Text
    phase: HangPhase | None = None
    step: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
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
    rank: Annotated[int, Field(ge=0, le=INT32_MAX)]
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


_Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class DataCursor(BaseModel):
    """A data stream position (the dataset's ``state_dict()``, ``worker.data.iterable.Cursor``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _no_bool_numbers = field_validator("*", mode="before")(classmethod(no_bool_numbers))

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
    skipped_steps: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    """Updates skipped in a row when it stopped."""
    committed_step: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
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
    | CheckpointsDeletedEvent
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

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(no_bool_numbers))

    attempt: Annotated[int, Field(ge=1, le=INT32_MAX)]
    events: Annotated[list[WorkerEvent], Field(min_length=1, max_length=1000)]


class ReportReply(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events already stored earlier (retries); ignored.")
    action: WorkerAction = Field(
        default=WorkerAction.NONE, description="What the controller asks the worker to do next."
    )
