"""Choosing the checkpoint to resume from (verified, config-compatible) and loading it into a TrainState.

Verification happens *before* anything is loaded: a corrupt newest checkpoint is reported at
ERROR level and the previous committed one is used, so a torn write or a flipped bit costs one
checkpoint interval, never the run. Upstream checked its MD5 only after loading the state.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from shared.paths import parse_step

from . import manifest as mf
from . import storage
from .state import TrainState
from .types import CheckpointError, CommittedCheckpoint

log = logging.getLogger("pyrecover.worker.checkpoint")


def resolve(run_dir: Path, which: str | Path) -> Path:
    """An explicit checkpoint: a path, or a ``step-<N>`` name inside the run directory."""
    path = Path(which)
    if not path.exists() and parse_step(str(which)) is not None:
        path = run_dir / str(which)
    return path


def choose_checkpoint(
    run_dir: Path,
    which: str | Path,
    *,
    run_config: Mapping[str, Any] | None,
    immutable_keys: Collection[str],
) -> dict[str, Any]:
    """Decide on rank 0; the result (plain data) is broadcast so every rank loads the same one.

    Keys: ``checkpoint`` (CommittedCheckpoint | None), ``warnings``, ``changed`` (allowed config
    changes) and ``error`` (a message every rank raises as CheckpointError, or None).
    """
    warnings: list[str] = []
    choice: dict[str, Any] = {"checkpoint": None, "warnings": warnings, "changed": {}, "error": None}
    chosen: CommittedCheckpoint | None = None
    if str(which) == "latest":
        candidates = mf.list_committed(run_dir)
        for ckpt in reversed(candidates):
            problems = mf.verify(ckpt.path, ckpt.manifest)
            if not problems:
                chosen = ckpt
                break
            msg = (
                f"checkpoint {ckpt.path} is corrupt ({'; '.join(problems[:3])}); "
                "falling back to the previous committed checkpoint"
            )
            log.error(msg)
            warnings.append(msg)
        if chosen is None:
            if candidates:
                choice["error"] = f"{len(candidates)} committed checkpoint(s) in {run_dir}, none verifies"
            return choice
    else:
        path = resolve(run_dir, which)
        try:
            manifest = mf.read_manifest(path)
        except CheckpointError as e:
            choice["error"] = f"cannot resume from {path}: {e}"
            return choice
        problems = mf.verify(path, manifest)
        if problems:
            choice["error"] = f"cannot resume from {path}: corrupt: {'; '.join(problems)}"
            return choice
        chosen = CommittedCheckpoint(path=path, step=int(manifest["step"]), manifest=manifest)
    choice["checkpoint"] = chosen
    if run_config is not None:
        changed = mf.diff_config(chosen.manifest.get("config") or {}, run_config)
        fatal = {k: v for k, v in changed.items() if mf.is_immutable(k, immutable_keys)}
        if fatal:
            detail = "; ".join(
                f"{k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in fatal.items()
            )
            choice["error"] = f"cannot resume from {chosen.path}: settings that must not change did: {detail}"
            return choice
        choice["changed"] = changed
    return choice


def load_into(state: TrainState, ckpt: CommittedCheckpoint, *, world_size: int) -> None:
    """Load a verified checkpoint of either format into ``state`` (collective under DCP)."""
    fmt = ckpt.manifest["format"]
    same_world = ckpt.manifest["world_size"] == world_size
    if fmt == "dcp":
        template = state.load_template(with_rng=same_world)
        storage.dcp_load(template, ckpt.path)
        state.load_state_dict(template)
    elif fmt == "vanilla":
        payload = storage.vanilla_load(ckpt.path)
        if not same_world:
            payload = {**payload, "rng": {}}
        state.load_state_dict(payload)
    else:
        raise CheckpointError(f"{ckpt.path}: unknown checkpoint format {fmt!r}")
