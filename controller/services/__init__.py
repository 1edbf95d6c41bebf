"""Domain operations on runs. Keyword arguments, a session from the caller, never a commit."""

from controller.services.errors import (
    AttemptNotFound,
    Conflict,
    DomainError,
    InvalidReport,
    InvalidTransition,
    RunNotFound,
)
from controller.services.reports import IngestResult, ingest
from controller.services.runs import (
    cancel_run,
    create_run,
    get_run,
    list_attempts,
    list_checkpoints,
    list_events,
    list_metrics,
    list_runs,
    request_action,
    resume_run,
)
from controller.services.tokens import (
    authenticate_token,
    check_token,
    create_user_token,
    hash_token,
    issue_worker_token,
    parse_ttl,
    refresh_worker_token,
    revoke_token,
    user_for_token,
)

__all__ = [
    "AttemptNotFound",
    "Conflict",
    "DomainError",
    "IngestResult",
    "InvalidReport",
    "InvalidTransition",
    "RunNotFound",
    "authenticate_token",
    "cancel_run",
    "check_token",
    "create_run",
    "create_user_token",
    "get_run",
    "hash_token",
    "ingest",
    "issue_worker_token",
    "list_attempts",
    "list_checkpoints",
    "list_events",
    "list_metrics",
    "list_runs",
    "parse_ttl",
    "refresh_worker_token",
    "request_action",
    "resume_run",
    "revoke_token",
    "user_for_token",
]
