"""What a worker report must satisfy beyond its schema before anything is stored.

The wire schema (``shared.schemas.reports``) admits any JSON number and any string; the store does
not: a time past year 9999 or a NaN time cannot become a datetime, an integer past 32/64 bits does
not fit its column, PostgreSQL refuses NUL bytes in text, and JSON responses cannot carry NaN or
infinity. Each of those used to surface as a 500 (found by ``tests/security/test_fuzz_openapi.py``).

Two kinds of fix, chosen so that a legitimate worker never loses data:

* values no real worker produces (an absurd time, seq or counter; a checkpoint path with ``..``
  or control characters) reject the whole batch with 422 naming the field (``events[3].time``);
* values a real worker *can* produce are kept in a storable form: a diverged loss (NaN/inf)
  becomes "no value" (``None``) in the metric series and in the stored event (a NaN in the event's
  JSON payload made PostgreSQL refuse the whole batch, and the worker retried it forever), and
  NUL bytes in error text become U+FFFD.
"""

from __future__ import annotations

import math
from typing import Any

from controller.services.errors import InvalidReport
from shared.schemas import (
    CheckpointCommittedEvent,
    DivergedEvent,
    FailedEvent,
    HungEvent,
    ProgressEvent,
    ReportBatch,
    StartedEvent,
    StoppingEvent,
    WarningEvent,
)
from shared.schemas.reports import INT32_MAX, INT64_MAX, MAX_DURATION_S, MAX_PATH_CHARS, MAX_UNIX_TIME

__all__ = ["INT32_MAX", "INT64_MAX", "MAX_DURATION_S", "MAX_PATH_CHARS", "MAX_UNIX_TIME", "check_batch"]
METRIC_FLOATS = ("loss", "lr", "tokens_per_s", "step_time", "grad_norm", "mfu")


def check_batch(batch: ReportBatch) -> ReportBatch:
    """``batch`` made storable, or ``InvalidReport`` naming the first value that cannot be.

    A progress event is copied only when it holds a non-finite value.
    """
    _int("attempt", batch.attempt, INT32_MAX)
    changed = False
    events = []
    for index, event in enumerate(batch.events):
        at = f"events[{index}]"
        _int(f"{at}.seq", event.seq, INT32_MAX)
        _int(f"{at}.step", event.step, INT32_MAX)
        _time(f"{at}.time", event.time)
        fixed = _check_event(at, event)
        changed = changed or fixed is not event
        events.append(fixed)
    return batch.model_copy(update={"events": events}) if changed else batch


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def finite_or_none(value: float | None) -> float | None:
    """A metric value JSON can carry: NaN and ±inf (a diverged loss) are stored as no value."""
    return value if value is not None and math.isfinite(value) else None


def check_path(field: str, value: str) -> str:
    """A reported checkpoint path: no ``..`` component, no control characters, bounded length."""
    if len(value) > MAX_PATH_CHARS:
        raise InvalidReport(f"must be at most {MAX_PATH_CHARS} characters", field=field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidReport("must not contain control characters (newlines, NUL, ...)", field=field)
    if ".." in value.replace("\\", "/").split("/"):
        raise InvalidReport("must not contain '..' components", field=field)
    return value


def _check_event(at: str, event: Any) -> Any:
    if isinstance(event, StartedEvent):
        _int(f"{at}.world_size", event.world_size, INT32_MAX)
        _int(f"{at}.resume_step", event.resume_step, INT32_MAX)
        if event.training_steps is not None:
            _int(f"{at}.training_steps", event.training_steps, INT32_MAX)
        _duration(f"{at}.startup_seconds", event.startup_seconds)
        _duration(f"{at}.checkpoint_load_seconds", event.checkpoint_load_seconds)
        if event.deadline is not None:
            _time(f"{at}.deadline", event.deadline)
        if event.resumed_from is not None:
            check_path(f"{at}.resumed_from", event.resumed_from)
    elif isinstance(event, ProgressEvent):
        _int(f"{at}.tokens_seen", event.tokens_seen, INT64_MAX)
        bad = {name: None for name in METRIC_FLOATS if not _finite(getattr(event, name))}
        if bad:  # the stored payload is JSON too, and PostgreSQL's json type refuses NaN
            return event.model_copy(update=bad)
    elif isinstance(event, CheckpointCommittedEvent):
        check_path(f"{at}.path", event.path)
        _int(f"{at}.size_bytes", event.size_bytes, INT64_MAX)
        _int(f"{at}.tokens_seen", event.tokens_seen, INT64_MAX)
        _duration(f"{at}.save_seconds", event.save_seconds)
        _duration(f"{at}.stall_seconds", event.stall_seconds)
    elif isinstance(event, StoppingEvent):
        if event.deadline is not None:
            _time(f"{at}.deadline", event.deadline)
    elif isinstance(event, FailedEvent):
        if "\x00" in event.error:
            return event.model_copy(update={"error": event.error.replace("\x00", "\ufffd")})
    elif isinstance(event, WarningEvent) and ("\x00" in event.kind or "\x00" in event.message):
        kind, message = (text.replace("\x00", "\ufffd") for text in (event.kind, event.message))
        return event.model_copy(update={"kind": kind, "message": message})
    elif isinstance(event, HungEvent) and "\x00" in event.stacks_excerpt:
        return event.model_copy(update={"stacks_excerpt": event.stacks_excerpt.replace("\x00", "\ufffd")})
    elif isinstance(event, DivergedEvent) and "\x00" in event.message:
        return event.model_copy(update={"message": event.message.replace("\x00", "\ufffd")})
    return event


def _int(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise InvalidReport(f"must be at most {limit}", field=field)


def _time(field: str, value: float) -> None:
    if not math.isfinite(value) or not 0 <= value <= MAX_UNIX_TIME:
        raise InvalidReport(f"must be a Unix time between 0 and {MAX_UNIX_TIME:.0f} (year 9999)", field=field)


def _duration(field: str, value: float) -> None:
    if not math.isfinite(value) or value > MAX_DURATION_S:
        raise InvalidReport(f"must be a finite number of seconds, at most {MAX_DURATION_S:.0f}", field=field)
