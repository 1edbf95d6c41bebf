"""Webhook targets (``policy.notify`` of a run, and the controller-wide ``notify_webhooks`` setting)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class NotifyEvent(StrEnum):
    """What a webhook can be told about a run."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ATTEMPT_FAILED = "attempt_failed"
    """An attempt ended badly (crash, lost, node failure, killed at the time limit); the run goes on."""
    HUNG = "hung"
    """An attempt was ended because it stopped making progress."""
    DIVERGED = "diverged"
    """An attempt stopped because its loss diverged."""


MAX_URL_CHARS = 2048


_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
URL_PATTERN = rf"^https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::{_PORT})?(?:[/?#][\x21-\x7e]*)?$"
"""What the OpenAPI document states of a webhook URL: http(s), a host name or a bracketed IP
address, a port in range, then printable ASCII; no user information."""


class NotifyTarget(BaseModel):
    """One webhook: where to POST, and which events it wants (all of them by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(max_length=MAX_URL_CHARS, pattern=URL_PATTERN)]
    """``http(s)://host[:port]/path``; no user name or password in the URL."""
    events: Annotated[list[NotifyEvent], Field(max_length=len(NotifyEvent))] = Field(
        default_factory=lambda: list(NotifyEvent)
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry a user name or password (the body is signed instead)")
        if any(ord(c) < 33 or ord(c) == 127 for c in v):
            raise ValueError("must not contain spaces or control characters")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"has an invalid port ({exc})") from None
        return v

    def wants(self, event: NotifyEvent) -> bool:
        return event in self.events
