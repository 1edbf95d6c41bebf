"""Checkpoints you can trust: atomic commits, verified loads, wrapper-independent keys, retention.

See docs/architecture.md ("Files on disk", "Invariants") for the contract and
``manager.py`` for the commit protocol.
"""

from .manager import CheckpointManager
from .state import TrainState
from .types import (
    CheckpointConfig,
    CheckpointError,
    CommittedCheckpoint,
    FreshStartRefused,
    NonFiniteState,
    RestoreResult,
    SaveFailed,
    SaveResult,
)

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointManager",
    "CommittedCheckpoint",
    "FreshStartRefused",
    "NonFiniteState",
    "RestoreResult",
    "SaveFailed",
    "SaveResult",
    "TrainState",
]
