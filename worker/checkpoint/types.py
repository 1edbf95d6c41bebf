"""The checkpoint manager's config, its result records and its error types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CheckpointFormat = Literal["dcp", "vanilla"]
FORMATS: tuple[CheckpointFormat, ...] = ("dcp", "vanilla")


class CheckpointError(Exception):
    """A checkpoint could not be written, verified or loaded; the message says which and why.

    DCP raises ``CheckpointException``, which derives from ``BaseException`` (so ``except Exception``
    misses it); the manager wraps it in this class so callers need only one ``except``.

    ``warnings``: what the checkpoint choice found on the way (a corrupt checkpoint moved into
    quarantine, ...), for the run's event log: the error alone does not name them.
    """

    def __init__(self, *args: object, warnings: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.warnings: tuple[str, ...] = tuple(warnings)


class NonFiniteState(CheckpointError):
    """A save was refused because the weights or optimizer state hold NaN/inf on some rank.

    Nothing was written: a checkpoint with non-finite weights is never committed (the run would
    resume from garbage). The training loop reports it as a divergence.
    """


class SaveFailed(CheckpointError):
    """A save could not be written (no space, an I/O error): nothing of it counts, the committed
    checkpoints are intact, and the next attempt may well succeed. Not an integrity error (exit 1,
    retried within the failure budget), unlike a checkpoint that cannot be read or verified."""


class FreshStartRefused(CheckpointError):
    """No committed checkpoint verifies, yet the run directory shows the run has a past.

    Quarantined or unverifiable checkpoints, or a ``loss.csv`` with rows: starting from step 0 would
    train over the run's history. Only an explicit choice starts over (the message says how).
    """


@dataclass(kw_only=True, frozen=True)
class CheckpointConfig:
    """Where checkpoints go and how they are written and retained."""

    root: Path
    """``--checkpoint-dir``: the directory that holds one sub-directory per run."""
    run_name: str
    """``--experiment-name``: checkpoints live in ``root/run_name/step-<N>/``."""
    format: CheckpointFormat = "dcp"
    """``dcp``: every rank writes its shard (torch.distributed.checkpoint). ``vanilla``: rank 0 torch.save."""
    async_save: bool = False
    """Write periodic saves in the background (DCP only); final saves are always synchronous."""
    keep_last_k: int = 3
    """How many of the newest committed checkpoints to keep (>= 2, so a corrupt newest has a fallback)."""
    keep_every_n: int | None = None
    """Additionally keep every checkpoint whose step is divisible by n (e.g. for evaluation later)."""
    io_threads: int = 1
    """DCP writer threads per rank (each writes its own file); more can help on parallel file systems."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.format not in FORMATS:
            raise ValueError(f"CheckpointConfig.format must be one of {FORMATS}, got {self.format!r}")
        if self.async_save and self.format != "dcp":
            raise ValueError(
                "CheckpointConfig.async_save needs format='dcp' (vanilla torch.save is synchronous)"
            )
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(
                f"CheckpointConfig.run_name must be a plain directory name, got {self.run_name!r}"
            )
        if self.keep_last_k < 2:
            raise ValueError(f"CheckpointConfig.keep_last_k must be >= 2, got {self.keep_last_k}")
        if self.keep_every_n is not None and self.keep_every_n < 1:
            raise ValueError(f"CheckpointConfig.keep_every_n must be >= 1 or None, got {self.keep_every_n}")
        if self.io_threads < 1:
            raise ValueError(f"CheckpointConfig.io_threads must be >= 1, got {self.io_threads}")

    @property
    def run_dir(self) -> Path:
        return self.root / self.run_name


@dataclass(frozen=True)
class CommittedCheckpoint:
    """A ``step-<N>`` directory whose manifest parses (its files are verified separately)."""

    path: Path
    step: int
    manifest: dict[str, Any]


@dataclass(frozen=True)
class SaveResult:
    """What one save cost and produced. ``stall_seconds`` is the time the caller was blocked."""

    path: Path
    step: int
    format: str
    size_bytes: int
    save_seconds: float
    stall_seconds: float
    async_save: bool
    tokens_seen: int
    final: bool
    deleted_steps: tuple[int, ...] = ()
    """Committed checkpoints retention deleted after this commit (rank 0 only; others: empty)."""


@dataclass(frozen=True)
class RestoreResult:
    """Which checkpoint was loaded, how long it took, and what the caller should know about it."""

    checkpoint: CommittedCheckpoint
    load_seconds: float
    warnings: list[str]
    changed_fields: dict[str, tuple[Any, Any]]
    """Config keys that differ from the checkpoint's (allowed ones only): key → (saved, current)."""
