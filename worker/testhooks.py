"""Fault injection for tests: a stalled data read, a NaN batch, a slow save, slow steps. Off unless
set.

Each hook is one ``PYRECOVER_TEST_*`` environment variable (``shared.envvars.TEST_PREFIX``). The API
refuses every ``PYRECOVER_*`` name in a run's ``resources.env`` and no backend passes the
controller's own ``PYRECOVER_*`` variables to a job, so only a test that starts the workers itself
can set them. A malformed value is a configuration error (exit code 3), never silently ignored.

Data batches are numbered by where they sit in the data stream, not by step: batch ``k`` is the one
that ends at ``k`` global batches consumed (``chunks_consumed / batch_size``). Without a skip that is
step ``k``; after ``--data-skip-to`` the same batch keeps its number, so a rolled-back run does not
meet an injected NaN batch again once its window is skipped.

* ``PYRECOVER_TEST_STALL_DATA=K[:SECONDS[:RANK]]``: reading batch K sleeps SECONDS (default 3600)
  on RANK (default every rank): a stalled read from a shared file system.
* ``PYRECOVER_TEST_NAN_BATCHES=K[-L][,...]``: rank 0's forward pass on those batches returns NaN,
  as a corrupt sample in rank 0's share would.
* ``PYRECOVER_TEST_SLOW_SAVE=SECONDS[:RANK]``: every checkpoint save sleeps SECONDS first on RANK
  (default every rank), inside the save.
* ``PYRECOVER_TEST_SLOW_STEPS=SECONDS``: every batch read sleeps SECONDS first, on every rank: a
  slower accelerator. Tests that run several SLURM chains on a few shared cores use it so a 1-minute
  window is mostly waiting: its steps, and the uninterrupted reference run's, then cost a fraction
  of the CPU, and each other's load barely changes how many windows a run takes.
* ``PYRECOVER_TEST_HOOKS_ATTEMPT=N``: the hooks act only in attempt N (``PYRECOVER_ATTEMPT``), so a
  resubmitted attempt can run clean.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared import envvars

log = logging.getLogger("pyrecover.worker")

STALL_DATA = f"{envvars.TEST_PREFIX}STALL_DATA"
NAN_BATCHES = f"{envvars.TEST_PREFIX}NAN_BATCHES"
SLOW_SAVE = f"{envvars.TEST_PREFIX}SLOW_SAVE"
SLOW_STEPS = f"{envvars.TEST_PREFIX}SLOW_STEPS"
HOOKS_ATTEMPT = f"{envvars.TEST_PREFIX}HOOKS_ATTEMPT"
_MAX_BATCHES = 100_000

T = TypeVar("T")


class HookError(ValueError):
    """A ``PYRECOVER_TEST_*`` value does not parse; the message names the variable."""


def _int(name: str, text: str, *, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HookError(f"{name}: {text!r} is not an integer") from None
    if value < low:
        raise HookError(f"{name}: {value} must be >= {low}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HookError(f"{name}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= 86_400:
        raise HookError(f"{name}: {text!r} must be in [0, 86400] seconds")
    return value


def _batches(name: str, text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        first = _int(name, lo, low=1)
        last = _int(name, hi, low=first) if sep else first
        if last - first + len(found) > _MAX_BATCHES:
            raise HookError(f"{name}: more than {_MAX_BATCHES} batches")
        found.update(range(first, last + 1))
    return frozenset(found)


@dataclass(frozen=True)
class FaultHooks:
    stall_batch: int | None = None
    stall_seconds: float = 3600.0
    stall_rank: int | None = None
    nan_batches: frozenset[int] = field(default_factory=frozenset)
    slow_save_seconds: float = 0.0
    slow_save_rank: int | None = None
    slow_step_seconds: float = 0.0

    @property
    def active(self) -> bool:
        return (
            self.stall_batch is not None
            or bool(self.nan_batches)
            or self.slow_save_seconds > 0
            or self.slow_step_seconds > 0
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultHooks:
        """The hooks ``env`` asks for (none when unset, or in another attempt than the one named)."""
        only = env.get(HOOKS_ATTEMPT)
        if only is not None and _int(HOOKS_ATTEMPT, only, low=1) != _int(
            envvars.ATTEMPT, env.get(envvars.ATTEMPT, "1"), low=1
        ):
            return cls()
        values: dict[str, Any] = {}
        if stall := env.get(STALL_DATA):
            parts = stall.split(":")
            if len(parts) > 3:
                raise HookError(f"{STALL_DATA}: expected BATCH[:SECONDS[:RANK]], got {stall!r}")
            values["stall_batch"] = _int(STALL_DATA, parts[0], low=1)
            if len(parts) > 1:
                values["stall_seconds"] = _seconds(STALL_DATA, parts[1])
            if len(parts) > 2:
                values["stall_rank"] = _int(STALL_DATA, parts[2])
        if nan := env.get(NAN_BATCHES):
            values["nan_batches"] = _batches(NAN_BATCHES, nan)
        if slow := env.get(SLOW_SAVE):
            parts = slow.split(":")
            if len(parts) > 2:
                raise HookError(f"{SLOW_SAVE}: expected SECONDS[:RANK], got {slow!r}")
            values["slow_save_seconds"] = _seconds(SLOW_SAVE, parts[0])
            if len(parts) > 1:
                values["slow_save_rank"] = _int(SLOW_SAVE, parts[1])
        if slow_steps := env.get(SLOW_STEPS):
            values["slow_step_seconds"] = _seconds(SLOW_STEPS, slow_steps)
        return cls(**values)


class _Injector:
    """Holds what the hooks need at run time: the dataset (for batch numbers) and the armed NaN."""

    def __init__(self, hooks: FaultHooks, *, rank: int, dataset: Any, global_batch: int) -> None:
        self.hooks = hooks
        self.rank = rank
        self.dataset = dataset
        self.global_batch = global_batch
        self.nan_armed = False

    def batch_number(self) -> int:
        return int(self.dataset.state_dict()["chunks_consumed"]) // self.global_batch

    def batches(self, inner: Iterator[T]) -> Iterator[T]:
        hooks = self.hooks
        for batch in inner:
            if hooks.slow_step_seconds > 0:
                time.sleep(hooks.slow_step_seconds)
            k = self.batch_number()
            if k == hooks.stall_batch and hooks.stall_rank in (None, self.rank):
                log.warning("test hook: stalling the read of batch %d for %.0f s", k, hooks.stall_seconds)
                time.sleep(hooks.stall_seconds)
            self.nan_armed = self.rank == 0 and k in hooks.nan_batches
            if self.nan_armed:
                log.warning("test hook: batch %d gives a NaN loss on rank 0", k)
            yield batch

    def poison(self, module: Any, args: Any, output: Any) -> Any:
        """Forward hook: the model's output turns NaN while the current batch is armed."""
        return output * float("nan") if self.nan_armed else None


def install(hooks: FaultHooks, *, rank: int, comp: Any, manager: Any, global_batch: int) -> tuple[Any, Any]:
    """Apply ``hooks``: returns (a wrapper for the batch iterator, the manager to save with)."""
    injector = _Injector(hooks, rank=rank, dataset=comp.dataset, global_batch=global_batch)
    if hooks.nan_batches:
        comp.model.register_forward_hook(injector.poison)
    if hooks.slow_save_seconds > 0 and hooks.slow_save_rank in (None, rank):
        manager = _SlowSaves(manager, hooks.slow_save_seconds)
    log.warning("test hooks active: %s", hooks)
    return injector.batches, manager


class _SlowSaves:
    """The checkpoint manager with a sleep at the start of every save (inside the save phase)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def save(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._seconds)
        return self._inner.save(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def from_environment() -> FaultHooks:
    return FaultHooks.from_env(os.environ)
