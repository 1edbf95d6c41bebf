"""The test hooks' parsing (a bad value is an error naming the variable, never ignored) and what
the batch wrapper does with them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from worker.testhooks import FaultHooks, HookError, _Injector


def test_unset_means_no_hooks() -> None:
    assert not FaultHooks.from_env({}).active


def test_every_hook_parses() -> None:
    hooks = FaultHooks.from_env(
        {
            "PYRECOVER_TEST_STALL_DATA": "8:30:1",
            "PYRECOVER_TEST_NAN_BATCHES": "3,7-9",
            "PYRECOVER_TEST_SLOW_SAVE": "2.5:0",
            "PYRECOVER_TEST_SLOW_STEPS": "0.25",
        }
    )
    assert (hooks.stall_batch, hooks.stall_seconds, hooks.stall_rank) == (8, 30.0, 1)
    assert hooks.nan_batches == {3, 7, 8, 9}
    assert (hooks.slow_save_seconds, hooks.slow_save_rank) == (2.5, 0)
    assert hooks.slow_step_seconds == 0.25 and hooks.active
    assert FaultHooks.from_env({"PYRECOVER_TEST_SLOW_STEPS": "0.1"}).active


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PYRECOVER_TEST_SLOW_STEPS", "fast"),
        ("PYRECOVER_TEST_SLOW_STEPS", "-1"),
        ("PYRECOVER_TEST_SLOW_STEPS", "nan"),
        ("PYRECOVER_TEST_SLOW_STEPS", "1e9"),
        ("PYRECOVER_TEST_STALL_DATA", "0"),
        ("PYRECOVER_TEST_STALL_DATA", "1:2:3:4"),
        ("PYRECOVER_TEST_NAN_BATCHES", "5-2"),
        ("PYRECOVER_TEST_SLOW_SAVE", "1:x"),
    ],
)
def test_a_bad_value_is_an_error_that_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(HookError, match=name):
        FaultHooks.from_env({name: value})


def test_hooks_act_only_in_the_attempt_named() -> None:
    env = {"PYRECOVER_TEST_SLOW_STEPS": "1", "PYRECOVER_TEST_HOOKS_ATTEMPT": "2"}
    assert not FaultHooks.from_env(env | {"PYRECOVER_ATTEMPT": "1"}).active
    assert FaultHooks.from_env(env | {"PYRECOVER_ATTEMPT": "2"}).slow_step_seconds == 1.0


class _Stream:
    """A dataset whose position advances by one global batch per batch read."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.consumed = 0

    def state_dict(self) -> dict[str, Any]:
        return {"chunks_consumed": self.consumed}

    def read(self, n: int) -> Any:
        for i in range(n):
            self.consumed += self.batch
            yield i


def test_slow_steps_sleep_before_every_batch_and_change_no_batch() -> None:
    stream = _Stream(batch=4)
    injector = _Injector(FaultHooks(slow_step_seconds=0.05), rank=1, dataset=stream, global_batch=4)
    started = time.monotonic()
    assert list(injector.batches(stream.read(6))) == list(range(6))
    assert time.monotonic() - started >= 6 * 0.05
