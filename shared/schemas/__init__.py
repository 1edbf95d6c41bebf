"""Wire schemas (pydantic) shared by the controller's API and the worker's reporter."""

from shared.schemas.reports import (
    CheckpointCommittedEvent,
    FailedEvent,
    FinishedEvent,
    ProgressEvent,
    ReportBatch,
    ReportReply,
    StartedEvent,
    StoppingEvent,
    WarningEvent,
    WorkerAction,
    WorkerEvent,
)
from shared.schemas.spec import PolicySpec, ResourcesSpec, RunCreate, TrainingSpec, parse_time_limit

__all__ = [
    "CheckpointCommittedEvent",
    "FailedEvent",
    "FinishedEvent",
    "PolicySpec",
    "ProgressEvent",
    "ReportBatch",
    "ReportReply",
    "ResourcesSpec",
    "RunCreate",
    "StartedEvent",
    "StoppingEvent",
    "TrainingSpec",
    "WarningEvent",
    "WorkerAction",
    "WorkerEvent",
    "parse_time_limit",
]
