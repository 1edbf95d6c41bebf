"""Webhook targets: only http(s) URLs with a host, no credentials, no control characters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.schemas.notify import NotifyEvent, NotifyTarget


def test_events_default_to_all_of_them() -> None:
    target = NotifyTarget(url="https://hooks.example/T1/B2")
    assert set(target.events) == set(NotifyEvent) and target.wants(NotifyEvent.HUNG)
    only = NotifyTarget(url="https://hooks.example/x", events=["completed"])
    assert only.wants(NotifyEvent.COMPLETED) and not only.wants(NotifyEvent.FAILED)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://hooks.example/",
        "https://",
        "https://user:pass@hooks.example/",
        "https://hooks.example/a b",
        "https://hooks.example/\nX-Injected: 1",
        "https://hooks.example:99999/",
        "https://hooks.example/" + "a" * 3000,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="url"):
        NotifyTarget(url=url)


def test_unknown_events_are_refused() -> None:
    with pytest.raises(ValidationError, match="events"):
        NotifyTarget(url="https://hooks.example/", events=["exploded"])
