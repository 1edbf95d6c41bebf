"""Choosing the checkpoint to resume from (verified, config-compatible) and loading it into a TrainState.

Verification happens *before* anything is loaded: a corrupt newest checkpoint is reported at
ERROR level and the previous committed one is used, so a torn write or a flipped bit costs one
checkpoint interval, never the run. Upstream checked its MD5 only after loading the state.

Every anomaly that made "latest" older than it looks becomes a warning (the worker reports
warnings as run events, so the user sees them on the run, not only in a log file):

* a committed checkpoint whose files do not match its manifest (flipped bytes, truncation, a
  missing file, a manifest whose checksums were forged or that leaves out data files). It is
  moved aside into quarantine (``shared.paths.quarantine_dir``), so that it no longer counts as
  committed (a later save of the same step would otherwise keep the corrupt copy as "already
  committed"). Nothing deletes a quarantined checkpoint: a transient read error on a shared file
  system makes a good checkpoint look corrupt, and it may be the run's only copy;
* a ``step-<N>`` directory newer than the checkpoint used that has no valid manifest (deleted,
  unreadable, or naming another step). The commit protocol never leaves one behind (it renames
  only after the manifest is written), so one is a sign of damage or of a hand-made copy.

And when no checkpoint verifies but the directory shows the run has a past (``run_history``:
quarantined or unverifiable checkpoints, a ``loss.csv`` with rows), "latest" does not quietly
start from step 0 over that history: it refuses (``FreshStartRefused``) unless the caller allows a
restart from scratch explicitly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from shared import checkpoint_manifest as shared_manifest
from shared.paths import (
    COMMITTED_MARKER,
    LOSS_CSV_NAME,
    MANIFEST_NAME,
    QUARANTINE_PREFIX,
    is_quarantined,
    parse_step,
    quarantine_dir,
)

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
    allow_fresh: bool = False,
) -> dict[str, Any]:
    """Decide on rank 0; the result (plain data) is broadcast so every rank loads the same one.

    Keys: ``checkpoint`` (CommittedCheckpoint | None), ``warnings``, ``changed`` (allowed config
    changes), ``error`` (a message every rank raises as CheckpointError, or None) and ``refused``
    (a message every rank raises as FreshStartRefused: nothing verifies but the run has a past and
    ``allow_fresh`` is False).
    """
    warnings: list[str] = []
    choice: dict[str, Any] = {
        "checkpoint": None,
        "warnings": warnings,
        "changed": {},
        "error": None,
        "refused": None,
    }
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
                choice["error"] = (
                    f"{len(candidates)} committed checkpoint(s) in {run_dir}, none verifies; they are "
                    f"kept in quarantine ({QUARANTINE_PREFIX}*). Check the file system, restore a good "
                    "copy as step-<N>/ (or pass --resume-from-checkpoint PATH) and resume"
                )
            elif not allow_fresh and (history := run_history(run_dir)):
                choice["refused"] = refusal_message(run_dir, history)
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
    hidden = quarantine_dir(path, step, "corrupt")
    try:
        os.rename(path, hidden)
    except OSError as e:
        log.warning("could not move the corrupt checkpoint %s aside: %s", path, e)
        return ""
    return f"; moved it into quarantine as {hidden.name} (kept: nothing deletes it)"


def run_history(run_dir: Path) -> list[str]:
    """What shows that a run has trained before, when no committed checkpoint verifies.

    One line per finding, naming the path: quarantined checkpoints, ``step-<N>`` directories without
    a valid manifest, a ``loss.csv`` with rows once the run has committed a checkpoint (its
    ``shared.paths.COMMITTED_MARKER``) or beside the other findings. Empty for a run directory that
    is new (or missing), and for one whose first attempt died before its first commit: its loss
    rows were never committed, and a fresh start is what resuming it means.
    """
    found: list[str] = []
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if is_quarantined(entry.name) and entry.is_dir():
            found.append(f"quarantined checkpoint {entry.path}")
        elif parse_step(entry.name) is not None and entry.is_dir():
            found.append(f"unverifiable checkpoint {entry.path} (no valid {MANIFEST_NAME})")
    rows = _loss_rows(run_dir / LOSS_CSV_NAME)
    if rows and (found or (run_dir / COMMITTED_MARKER).exists()):
        found.append(f"{run_dir / LOSS_CSV_NAME} with {rows} row(s)")
    return found


def _loss_rows(path: Path) -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)  # minus the header
    except OSError:
        return 0


def refusal_message(run_dir: Path, history: list[str]) -> str:
    """The one-paragraph error for a refused fresh start: what was found, and the ways on."""
    shown = "; ".join(history[:8]) + (f"; and {len(history) - 8} more" if len(history) > 8 else "")
    return (
        f"refusing to start from scratch over the history of {run_dir}: no committed checkpoint verifies, "
        f"but it holds {shown}. Nothing was changed. To continue, restore a good checkpoint as "
        f"{run_dir}/step-<N>/ (a quarantined one, once checked with `pyrecover checkpoint verify`, can be "
        "renamed back) or pass --resume-from-checkpoint PATH; to train from step 0 over this history, pass "
        "--resume-from-checkpoint none or --allow-restart-from-scratch"
    )


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
        state.load_state_dict(payload, whole_tensors=True)
    else:
        raise CheckpointError(f"{ckpt.path}: unknown checkpoint format {fmt!r}")
