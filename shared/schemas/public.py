"""What the REST API returns (``GET /api/v1/runs`` …): read models, separate from the Create bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from shared.events import WorkerAction
from shared.exclusions import ExclusionReason
from shared.schemas.spec import RunCreate
from shared.states import AttemptState, EndReason, RunState

T = TypeVar("T")


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items`` plus the total matching the filter, for ``limit``/``offset`` paging."""

    items: list[T]
    total: int
    limit: int
    offset: int


class GoodputPublic(_Public):
    """Seconds summed over the run's attempts; ``goodput`` = productive_committed_s / allocated_s."""

    goodput: float | None = None
    allocated_s: float = 0.0
    productive_committed_s: float = 0.0
    lost_work_s: float = 0.0
    queue_wait_s: float = 0.0
    checkpoint_stall_s: float = 0.0
    wall_s: float = Field(default=0.0, description="The run's wall time: created → finished (or now).")
    ledger: dict[str, float] = Field(
        default_factory=dict,
        description="The wall time split into queue_wait, resubmission_gap, startup, checkpoint_load, "
        "productive, save_stall, idle_tail, lost_work, hung and in_progress seconds (they add up to wall_s).",
    )


class RunPublic(_Public):
    id: int
    name: str
    owner: str = Field(default="", description="The user who created the run (or was handed it).")
    state: RunState
    scheduler: str
    training_steps: int
    current_step: int
    tokens_seen: int
    latest_checkpoint_step: int | None
    attempts_count: int
    failures_without_progress: int = Field(
        default=0,
        description="Attempts in a row, since the run was last resumed, that committed no new checkpoint.",
    )
    last_error: str | None
    cancel_requested: bool
    pending_action: WorkerAction
    next_submit_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    goodput: float | None = Field(default=None, description="Productive committed time / allocated time.")
    goodput_detail: GoodputPublic = Field(default_factory=GoodputPublic)
    spec: RunCreate


class ExclusionPublic(_Public):
    """A host the run's next attempts keep off (``sbatch --exclude``) until ``expires_at``."""

    host: str
    reason: ExclusionReason
    attempt: int = Field(description="The attempt whose end put the host on the list.")
    created_at: datetime
    expires_at: datetime


class AttemptPublic(_Public):
    id: int
    number: int
    backend: str
    job_name: str
    external_id: str | None
    state: AttemptState
    scheduler_state: str | None
    submit_time: datetime | None
    start_time: datetime | None
    stopping_time: datetime | None
    end_time: datetime | None
    deadline: datetime | None
    step_at_start: int | None
    step_at_end: int | None
    resumed_from: str | None
    end_reason: EndReason | None
    exit_code: int | None
    error: str | None
    dependency_job_id: str | None
    last_report_at: datetime | None
    # Goodput figures of the attempt, derived when read (zeros only before the presenter fills them).
    allocated_s: float = 0.0
    queue_wait_s: float = 0.0
    startup_s: float = 0.0
    checkpoint_load_s: float = 0.0
    productive_committed_s: float = 0.0
    lost_work_s: float = 0.0
    checkpoint_stall_s: float = 0.0


class CheckpointPublic(_Public):
    step: int
    attempt: int | None
    path: str
    format: str
    size_bytes: int
    save_seconds: float
    stall_seconds: float
    async_save: bool
    tokens_seen: int
    final: bool
    committed_at: datetime
    on_disk: bool = Field(
        default=True,
        description="False once the worker's retention deleted it: it cannot be resumed from or exported.",
    )
    deleted_at: datetime | None = Field(default=None, description="When retention deleted it (reported).")


class MetricPoint(_Public):
    step: int
    attempt: int
    time: datetime
    loss: float | None
    lr: float | None
    tokens_per_s: float | None
    step_time: float | None
    grad_norm: float | None
    mfu: float | None
    tokens_seen: int


class EventPublic(_Public):
    id: int
    time: datetime
    kind: str
    message: str
    data: dict[str, Any] | None


class RunAction(BaseModel):
    """Body of ``POST /runs/{id}/actions``: ask the running worker to checkpoint now or stop gracefully."""

    model_config = ConfigDict(extra="forbid")

    action: Literal[WorkerAction.CHECKPOINT, WorkerAction.STOP]


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    reconciler: Literal["running", "off"]
