"""Jinja filters: durations, relative times, sizes, percentages. Pure functions, unit-tested."""

from __future__ import annotations

from datetime import UTC, datetime

Instant = datetime | float | int | None


def to_unix(value: Instant) -> float | None:
    """Unix seconds of a datetime (naive = UTC, as the DB stores it) or a number; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``, ``3d 04h``; ``–`` for None or a negative value."""
    if seconds is None or seconds < 0:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def ago(value: Instant, now: float) -> str:
    """``just now``, ``5m 02s ago``; ``–`` when unknown. ``now`` is Unix seconds."""
    t = to_unix(value)
    if t is None:
        return "–"
    delta = now - t
    if delta < 2:
        return "just now"
    return f"{duration(delta)} ago"


def isotime(value: Instant) -> str:
    """``2026-11-28 21:05:43 UTC``, for tooltips; empty when unknown."""
    t = to_unix(value)
    if t is None:
        return ""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pct(value: float | None) -> str:
    """A fraction as ``87.5%``; ``–`` when unknown."""
    return "–" if value is None else f"{100.0 * value:.1f}%"


def filesize(n: int | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    if n is None:
        return "–"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    units = ["KiB", "MiB", "GiB", "TiB"]
    unit = units.pop(0)
    size /= 1024
    while size >= 1024 and units:
        size /= 1024
        unit = units.pop(0)
    return f"{size:.1f} {unit}"


def tokens(n: int | None) -> str:
    """A token count at a glance: ``950``, ``12.3K``, ``4.50M``, ``1.20B``; ``–`` when unknown."""
    if n is None:
        return "–"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return str(n)
