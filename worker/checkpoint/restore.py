"""Choosing the checkpoint to resume from (verified, config-compatible) and loading it into a TrainState.

Verification happens *before* anything is loaded: a corrupt newest checkpoint is reported at
ERROR level and the previous committed one is used, so a torn write or a flipped bit costs one
checkpoint interval, never the run. Upstream checked its MD5 only after loading the state.

Every anomaly that made "latest" older than it looks becomes a warning (the worker reports
warnings as run events, so the user sees them on the run, not only in a log file):

* a committed checkpoint whose files do not match its manifest (flipped bytes, truncation, a
  missing file, a manifest whose checksums were forged or that leaves out data files). It is
  moved aside to a temporary name, so that it no longer counts as committed (a later save of
  the same step would otherwise keep the corrupt copy as "already committed") and is removed
  like any abandoned temporary after the next commit;
* a ``step-<N>`` directory newer than the checkpoint used that has no valid manifest (deleted,
  unreadable, or naming another step). The commit protocol never leaves one behind (it renames
  only after the manifest is written), so one is a sign of damage or of a hand-made copy.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from shared import checkpoint_manifest as shared_manifest
from shared.paths import MANIFEST_NAME, TMP_PREFIX, parse_step

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
            problems = problems_of(ckpt)
            if not problems:
                chosen = ckpt
                break
            msg = (
                f"checkpoint {ckpt.path} is corrupt ({'; '.join(problems[:3])}); "
                f"falling back to the previous committed checkpoint{_quarantine(ckpt.path, ckpt.step)}"
            )
            log.error(msg)
            warnings.append(msg)
        for msg in _uncommitted_step_dirs(run_dir, newer_than=chosen.step if chosen else -1):
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
        chosen = CommittedCheckpoint(path=path, step=int(manifest["step"]), manifest=manifest)
        problems = problems_of(chosen)
        if problems:
            choice["error"] = f"cannot resume from {path}: corrupt: {'; '.join(problems)}"
            return choice
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


def problems_of(ckpt: CommittedCheckpoint) -> list[str]:
    """``manifest.verify`` plus what a forged manifest could hide (``shared.checkpoint_manifest``)."""
    return shared_manifest.problems(ckpt.path, ckpt.manifest)


def _quarantine(path: Path, step: int) -> str:
    """Move a corrupt checkpoint out of the committed namespace; returns a note for the message."""
    hidden = path.with_name(f"{TMP_PREFIX}{step}-corrupt-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, hidden)
    except OSError as e:
        log.warning("could not move the corrupt checkpoint %s aside: %s", path, e)
        return ""
    return f"; moved it aside to {hidden.name}"


def _uncommitted_step_dirs(run_dir: Path, *, newer_than: int) -> list[str]:
    """A warning per ``step-<N>`` directory (N > ``newer_than``) that does not count as committed."""
    found: list[str] = []
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: parse_step(e.name) or -1)
    except OSError:
        return found
    for entry in entries:
        step = parse_step(entry.name)
        if step is None or step <= newer_than or not entry.is_dir():
            continue
        try:
            manifest = mf.read_manifest(Path(entry.path))
        except CheckpointError as e:
            why = str(e).removeprefix(f"{entry.path}: ").removesuffix(" (not a committed checkpoint)")
        else:
            if manifest["step"] == step:
                continue  # committed (and handled by the caller)
            why = f"its {MANIFEST_NAME} names step {manifest['step']}"
        found.append(
            f"{entry.path} is newer than the checkpoint used but has no valid manifest ({why}); ignored it"
        )
    return found


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
