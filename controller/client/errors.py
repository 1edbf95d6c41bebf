"""The client's exceptions: one class per kind of refusal, each carrying the server's own message."""

from __future__ import annotations

from typing import Any

import httpx


class PyrecoverError(Exception):
    """Anything the client could not do; ``str(error)`` is one line a person can act on."""

    status: int | None = None


class ConnectionFailed(PyrecoverError):
    """The controller did not answer (not started, wrong URL, network down)."""


class ApiError(PyrecoverError):
    """The controller answered with an error status; ``message`` is its own explanation."""

    def __init__(self, status: int, message: str, *, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.fields = fields or []
        """For a 422: ``[{"field": "training.training_steps", "msg": "..."}, ...]``."""


class AuthenticationError(ApiError):
    """401: no token, or the token is unknown, expired or revoked."""


class PermissionDenied(ApiError):
    """403: the token may not do this (a worker token on a user route, a viewer acting...)."""


class NotFound(ApiError):
    """404: no such run (or one this token may not see)."""


class Conflict(ApiError):
    """409: the request contradicts the run's state (cancel an ended run, a name already taken...)."""


class InvalidRequest(ApiError):
    """422: a field was rejected; ``fields`` names each one."""


class RateLimited(ApiError):
    """429: too many requests; retry after ``retry_after`` seconds."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class Unavailable(ApiError):
    """503: the controller's database is unreachable or locked for now; nothing was changed."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    503: Unavailable,
}


def error_for(response: httpx.Response) -> ApiError:
    """The exception for an error reply, with the server's message (every rejected field for a 422)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    fields: list[dict[str, Any]] = []
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            field = (
                item.get("field") or ".".join(str(p) for p in item.get("loc", []) if p != "body") or "request"
            )
            fields.append({"field": field, "msg": str(item.get("msg", "invalid"))})
            parts.append(f"{field}: {item.get('msg', 'invalid')}")
        message = "; ".join(parts)
    elif detail is not None:
        message = str(detail)
    else:
        message = response.text.strip()[:300] or response.reason_phrase
    status = response.status_code
    if status == 429:
        try:
            retry = float(response.headers.get("Retry-After", ""))
        except ValueError:
            retry = None
        return RateLimited(status, message, retry_after=retry)
    cls = _BY_STATUS.get(status, ApiError)
    if cls is InvalidRequest or cls is ApiError:
        return cls(status, message, fields=fields)
    return cls(status, message)
