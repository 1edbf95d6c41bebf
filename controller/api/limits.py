"""Limits that keep one caller from hurting the others.

* ``BodySizeLimit``: request bodies over ``max_bytes`` get 413, as pure ASGI middleware so no
  route ever buffers a huge body (a ``Content-Length`` over the limit is refused unread).
* ``ReportRateLimiter``: a token bucket per run for ``POST /runs/{id}/reports``. A worker flooding
  reports gets 429 with ``Retry-After`` (the worker's client backs off and retries; nothing is
  lost), and the requests it may still make are bounded, so other runs' reports keep flowing. A
  batch that turns out to hold only duplicates is refunded (see ``ReportRateLimiter.refund``).
* ``LoginThrottle``: failed dashboard sign-ins per client address; past the limit a minute, the
  address gets 429 until its oldest failure is a minute old (a password-guessing loop slows to a
  crawl; a typo costs nothing).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.settings import REPORT_BURST, REPORT_RATE_PER_S

__all__ = [
    "REPORT_BURST",
    "REPORT_RATE_PER_S",
    "BodySizeLimit",
    "LoginThrottle",
    "RateLimited",
    "ReportRateLimiter",
    "retry_after_header",
]


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read at most max_bytes + 1, then replay what was read.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class RateLimited(Exception):
    """Too many requests for one key (HTTP 429 with ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class ReportRateLimiter:
    """A token bucket per run: ``rate_per_s`` refill, ``burst`` capacity. Thread-safe (sync routes
    run in a thread pool); memory is bounded by the number of runs that reported recently."""

    def __init__(
        self,
        *,
        rate_per_s: float = REPORT_RATE_PER_S,
        burst: int = REPORT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.refused = 0
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, run_id: int) -> None:
        """Take one request's token for ``run_id``, or raise ``RateLimited``."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(run_id)
            if bucket is None:
                if len(self._buckets) > 10_000:
                    self._forget_full(now)
                bucket = self._buckets[run_id] = _Bucket(tokens=float(self.burst), stamp=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate_per_s)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            self.refused += 1
            wait = (1.0 - bucket.tokens) / self.rate_per_s
        raise RateLimited(
            f"too many reports for run {run_id}: at most {self.rate_per_s:g} requests/s "
            f"(bursts of {self.burst}); retry after {wait:.2f} s",
            retry_after_s=wait,
        )

    def refund(self, run_id: int) -> None:
        """Give back the token of a request that stored nothing new (every event a duplicate).

        A worker replaying its spool re-sends batches it already delivered when a later batch was
        refused; charging for those again would let a large spool replay forever without getting
        further (found by tests/security/test_limits.py). A duplicate-only batch costs one indexed
        read, so leaving it free does not reopen the flood."""
        with self._lock:
            bucket = self._buckets.get(run_id)
            if bucket is not None:
                bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: forgetting them changes nothing."""
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate_per_s >= self.burst
        ]
        for key in full:
            del self._buckets[key]


class LoginThrottle:
    """At most ``failures_per_minute`` failed sign-ins per key (the client's address) in any 60 s.

    Thread-safe; remembers at most ``max_keys`` addresses (the least recently failing are
    forgotten first), so a flood of spoofed sources cannot grow it without bound."""

    WINDOW_S = 60.0

    def __init__(
        self, *, failures_per_minute: int, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_per_minute < 1:
            raise ValueError("failures_per_minute must be at least 1")
        self.limit = failures_per_minute
        self.max_keys = max_keys
        self.clock = clock
        self.refused = 0
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is not None:
            while times and times[0] <= now - self.WINDOW_S:
                times.popleft()
        return times

    def check(self, key: str) -> None:
        """Raise ``RateLimited`` if ``key`` failed too often in the last minute."""
        now = self.clock()
        with self._lock:
            times = self._recent(key, now)
            if times is None or len(times) < self.limit:
                return
            self.refused += 1
            wait = times[0] + self.WINDOW_S - now
        raise RateLimited(
            f"too many failed sign-ins from {key}: at most {self.limit} a minute; retry after {wait:.0f} s",
            retry_after_s=wait,
        )

    def failed(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque()
                while len(self._failures) > self.max_keys:
                    self._failures.popitem(last=False)
            self._failures.move_to_end(key)
            times.append(now)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: round up, at least 1."""
    return str(max(1, math.ceil(seconds)))
