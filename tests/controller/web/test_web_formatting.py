"""Jinja filters used by the dashboard pages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controller.web import formatting as fmt


@pytest.mark.parametrize(
    "seconds,text",
    [
        (None, "–"),
        (-1, "–"),
        (0, "0s"),
        (59.4, "59s"),
        (60, "1m 00s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (86_399, "23h 59m"),
        (90_000, "1d 01h"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


def test_ago_and_isotime_accept_naive_aware_and_numbers() -> None:
    naive = datetime(2026, 1, 1, 12, 0, 0)
    aware = naive.replace(tzinfo=UTC)
    now = aware.timestamp() + 125
    assert fmt.ago(naive, now) == fmt.ago(aware, now) == fmt.ago(aware.timestamp(), now) == "2m 05s ago"
    assert fmt.ago(now - 1, now) == "just now"
    assert fmt.ago(None, now) == "–"
    assert fmt.isotime(naive) == "2026-01-01 12:00:00 UTC"
    assert fmt.isotime(None) == ""


@pytest.mark.parametrize(
    "n,text",
    [
        (None, "–"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**52, "4096.0 TiB"),
    ],
)
def test_filesize(n: int | None, text: str) -> None:
    assert fmt.filesize(n) == text


def test_pct() -> None:
    assert fmt.pct(None) == "–"
    assert fmt.pct(0.875) == "87.5%"
