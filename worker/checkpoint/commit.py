"""Rank 0's half of the commit protocol: checksums → manifest → atomic rename → retention.

Every step is durable before the next begins: files are fsynced (by their writer, or here when
read back), then the temporary directory, then ``manifest.json``, then the rename is made durable
by fsyncing the run directory. A crash between any two steps leaves a temporary that no reader
counts and the next commit removes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.paths import COMMITTED_MARKER, MANIFEST_NAME, parse_step, quarantine_dir

from . import manifest as mf
from . import retention
from .types import CheckpointConfig, CheckpointError, CommittedCheckpoint, SaveResult

log = logging.getLogger("pyrecover.worker.checkpoint")


def commit(
    tmp: Path,
    final: Path,
    *,
    known: Mapping[str, dict[str, Any]] | None,
    world_size: int,
    fmt: str,
    run_config: Mapping[str, Any] | None,
    progress: Mapping[str, Any],
    attempt: Mapping[str, Any] | None = None,
) -> CommittedCheckpoint:
    """Turn the fully written ``tmp`` into the committed ``final`` (``step-<N>``); ``attempt``: the
    manifest's ``attempt`` (``CheckpointManager.attempt``)."""
    step = parse_step(final.name)
    if step is None:
        raise ValueError(f"{final} is not a step-<N> directory")
    # Files checksummed while written were fsynced by their writer; the rest are read back here.
    files = mf.checksum_files(tmp, known=known, fsync=True)
    mf.fsync_dir(tmp)
    manifest = mf.build_manifest(
        step=step,
        world_size=world_size,
        fmt=fmt,
        files=files,
        run_config=run_config,
        tokens_seen=int(progress.get("tokens_seen", 0)),
        data_cursor=progress.get("data_cursor"),
    )
    if attempt:
        manifest["attempt"] = {**attempt, "committed_at": time.time()}
    mf.write_manifest(tmp, manifest)
    if final.exists():
        try:
            existing: dict[str, Any] | None = mf.read_manifest(final)
        except CheckpointError:
            existing = None
        if existing is not None and existing["step"] == step:
            # Committed meanwhile (e.g. by an earlier attempt): never overwrite, drop ours.
            shutil.rmtree(tmp, ignore_errors=True)
            return CommittedCheckpoint(path=final, step=step, manifest=existing)
        # A step-<N> without a valid manifest is damage or a hand-made copy, never our debris (we
        # rename only after the manifest is written): quarantine it, never delete it.
        os.rename(final, quarantine_dir(final, step, "invalid"))
    os.rename(tmp, final)
    marker = final.parent / COMMITTED_MARKER
    if not marker.exists():  # the run has a committed past from now on (restore.run_history)
        marker.write_text(f"{step}\n")
    mf.fsync_dir(final.parent)
    return CommittedCheckpoint(path=final, step=step, manifest=manifest)


def retain(config: CheckpointConfig, *, restored_step: int | None, busy: list[Path]) -> list[int]:
    """Apply the retention policy after a commit and remove temporaries older than the newest commit."""
    committed = mf.list_committed(config.run_dir)
    if not committed:
        return []
    protected = {committed[-1].step}
    if restored_step is not None:
        protected.add(restored_step)
    deleted = retention.apply_retention(
        committed, keep_last_k=config.keep_last_k, keep_every_n=config.keep_every_n, protected=protected
    )
    try:
        newest = (committed[-1].path / MANIFEST_NAME).stat().st_mtime
    except OSError:
        newest = time.time()
    retention.remove_stale_temporaries(config.run_dir, older_than=newest, in_flight=busy)
    return deleted


def committed_at(path: Path) -> CommittedCheckpoint | None:
    """``path`` as a committed checkpoint if its manifest parses and names its step, else None."""
    step = parse_step(path.name)
    if step is None:
        return None
    try:
        manifest = mf.read_manifest(path)
    except CheckpointError:
        return None
    return CommittedCheckpoint(path=path, step=step, manifest=manifest) if manifest["step"] == step else None


def existing_result(path: Path, *, final: bool, async_save: bool) -> SaveResult:
    """The SaveResult for a step that was already committed (an idempotent re-save)."""
    manifest = mf.read_manifest(path)
    return SaveResult(
        path=path,
        step=int(manifest["step"]),
        format=str(manifest["format"]),
        size_bytes=int(manifest.get("size_bytes", 0)),
        save_seconds=0.0,
        stall_seconds=0.0,
        async_save=async_save,
        tokens_seen=int(manifest.get("tokens_seen", 0)),
        final=final,
    )
