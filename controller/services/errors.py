"""Domain errors. Services raise them; only the API edge maps them to HTTP status codes."""

from __future__ import annotations

from controller.state_machine import DomainError, InvalidTransition

__all__ = [
    "AttemptNotFound",
    "Conflict",
    "DomainError",
    "InvalidReport",
    "InvalidSpec",
    "InvalidTransition",
    "ReportForbidden",
    "RunNotFound",
]


class RunNotFound(DomainError):
    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} does not exist")
        self.run_id = run_id


class Conflict(DomainError):
    """The request contradicts what is stored, e.g. a run name already taken (HTTP 409)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AttemptNotFound(DomainError):
    """A report for an attempt number the run never had (HTTP 409: the worker is out of date)."""


class InvalidReport(DomainError):
    """A report the schema admits but the store cannot hold or must not trust (HTTP 422): a time
    outside the calendar, a counter past 64 bits, a checkpoint path with ``..`` or control characters.
    ``field`` names the value the way request validation does (``events[3].time``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidSpec(DomainError):
    """A run asks for something this controller's rules refuse (HTTP 422): a variable off the
    allow-list, an sbatch option not allowed, a path outside the roots. ``field`` names the value
    the way request validation does (``resources.env``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class ReportForbidden(DomainError):
    """A report from a token that may not make it (HTTP 403): not a worker token, another run's,
    or one issued for an earlier attempt than the report names."""
