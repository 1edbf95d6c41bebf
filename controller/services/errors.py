"""Domain errors. Services raise them; only the API edge maps them to HTTP status codes."""

from __future__ import annotations

from controller.state_machine import DomainError, InvalidTransition

__all__ = [
    "AttemptNotFound",
    "Conflict",
    "DomainError",
    "InvalidField",
    "InvalidReport",
    "InvalidTransition",
    "NotShared",
    "QuotaExceeded",
    "ReportForbidden",
    "RunNotFound",
    "TokenNotFound",
    "UserNotFound",
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


class InvalidField(DomainError):
    """A request field the schema admits but this controller's rules refuse (HTTP 422): a variable
    off the allow-list, an sbatch option not allowed, a path outside the roots, a webhook aimed at a
    private address, a run that does not fit its GPU. ``field`` names the value the way request
    validation does (``resources.env``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class UserNotFound(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} does not exist")
        self.name = name


class TokenNotFound(DomainError):
    def __init__(self, token_id: int) -> None:
        super().__init__(f"token {token_id} does not exist (or is a worker token)")
        self.token_id = token_id


class QuotaExceeded(DomainError):
    """The owner already has as many active runs as their limit allows (HTTP 429)."""

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(
            f"user {user} already has {limit} active run(s), their limit: wait for one to end, "
            "cancel one, or ask an admin to raise the limit"
        )
        self.limit = limit


class NotShared(DomainError):
    """Unsharing a run from a user it was not shared with (HTTP 404)."""


class ReportForbidden(DomainError):
    """A report from a token that may not make it (HTTP 403): not a worker token, another run's,
    or one issued for an earlier attempt than the report names."""
