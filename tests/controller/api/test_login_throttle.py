"""``controller/api/limits.py:LoginThrottle`` with a fake clock (the report limiter and the body cap
are attacked in tests/security/test_limits.py)."""

from __future__ import annotations

import pytest

from controller.api.limits import LoginThrottle, RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_past_the_limit_refuse_until_the_oldest_is_a_minute_old() -> None:
    clock = Clock()
    throttle = LoginThrottle(failures_per_minute=3, clock=clock)
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        throttle.check("10.0.0.1")
    assert refused.value.retry_after_s == pytest.approx(30)
    throttle.check("10.0.0.2")  # another address is not affected
    clock.now += 30.01
    throttle.check("10.0.0.1")  # the first failure is a minute old
    assert throttle.refused == 1


def test_memory_is_bounded() -> None:
    throttle = LoginThrottle(failures_per_minute=1, max_keys=100, clock=Clock())
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100
    with pytest.raises(RateLimited):
        throttle.check("10.0.3.231")  # the most recent are remembered
    with pytest.raises(ValueError):
        LoginThrottle(failures_per_minute=0)
