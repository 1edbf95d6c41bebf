"""Worker → controller reports (``POST /api/v1/runs/{id}/reports``) and the controller's reply.

Each event carries ``seq``, increasing per (run, attempt) from 0; the controller stores an event
at most once per (run, attempt, seq), which makes a retried batch (or a spooled one delivered
late) change nothing twice.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import EventType, StopReason, WorkerAction

__all__ = [
    "CheckpointCommittedEvent",
    "CheckpointsDeletedEvent",
    "FailedEvent",
    "FinishedEvent",
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


WorkerEvent = Annotated[
    StartedEvent
    | ProgressEvent
    | CheckpointCommittedEvent
    | CheckpointsDeletedEvent
    | StoppingEvent
    | FinishedEvent
    | FailedEvent
    | WarningEvent,
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
