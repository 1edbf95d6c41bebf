"""``controller.demo.plan``: the demo run needs at least three windows, and a machine too slow for the
window asked gets the fix in the error."""

from __future__ import annotations

import pytest

from controller.demo.plan import Calibration, auto_window, plan_steps, useful_seconds


def test_the_plan_needs_at_least_three_windows() -> None:
    for cal in (Calibration(0.3, 10.0, 0.5), Calibration(0.05, 4.0, 0.2), Calibration(1.2, 14.0, 0.6)):
        steps = plan_steps(cal, 45, stop_overhead=10.0)
        per_window = useful_seconds(cal, 45, 10.0) / cal.step_time
        # ceil(2.6 windows): a third attempt is needed unless attempts train ~30% faster than measured.
        assert 2.5 * per_window <= steps <= 2.7 * per_window + 1
        assert steps >= 12


def test_windows_are_45_s_unless_starting_a_worker_alone_takes_most_of_that() -> None:
    assert auto_window(Calibration(0.3, 10.0, 0.5), stop_overhead=10.0) == 45
    slow = Calibration(0.6, 30.0, 0.8)
    window = auto_window(slow, stop_overhead=10.0)
    assert window > 45
    assert 15 <= useful_seconds(slow, window, 10.0) < 16


def test_a_window_too_short_for_this_machine_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"use --window \d+ or more"):
        plan_steps(Calibration(0.5, 20.0, 1.0), 30, stop_overhead=20.0)
