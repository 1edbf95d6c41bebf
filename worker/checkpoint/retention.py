"""Which committed checkpoints to keep, and the removal of the rest (never fatal).

Kept: the newest ``keep_last_k``, every step divisible by ``keep_every_n``, and whatever is
protected (always the newest committed one and the one this job resumed from). Steps are
compared as integers — upstream sorted names as strings and deleted ``ckpt_100`` while keeping
``ckpt_90``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path

from shared.paths import TMP_PREFIX, is_quarantined

from .types import CommittedCheckpoint

log = logging.getLogger("pyrecover.worker.checkpoint")


def steps_to_keep(
    steps: Iterable[int], *, keep_last_k: int, keep_every_n: int | None, protected: Collection[int] = ()
) -> set[int]:
    ordered = sorted(set(steps))
    keep = set(ordered[-keep_last_k:]) if keep_last_k > 0 else set()
    if ordered:
        keep.add(ordered[-1])
    if keep_every_n:
        keep.update(s for s in ordered if s % keep_every_n == 0)
    keep.update(s for s in protected if s in ordered)
    return keep


def _discard(path: Path, step: int) -> None:
    """Rename out of sight first (atomic), so a half-deleted directory never looks committed."""
    hidden = path.with_name(f"{TMP_PREFIX}{step}-deleted-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, hidden)
    except OSError as e:
        log.warning("retention: could not remove %s (%s); keeping it", path, e)
        return
    _rmtree(hidden)


def _rmtree(path: Path | str) -> None:
    try:
        shutil.rmtree(path)
    except OSError as e:
        log.warning("retention: could not delete %s (%s); it will be retried later", path, e)


def apply_retention(
    committed: list[CommittedCheckpoint],
    *,
    keep_last_k: int,
    keep_every_n: int | None,
    protected: Collection[int] = (),
) -> list[int]:
    """Delete what the policy does not keep; return the steps deleted. Failures only log warnings."""
    keep = steps_to_keep(
        (c.step for c in committed), keep_last_k=keep_last_k, keep_every_n=keep_every_n, protected=protected
    )
    deleted: list[int] = []
    for ckpt in committed:
        if ckpt.step not in keep:
            _discard(ckpt.path, ckpt.step)
            if not ckpt.path.exists():
                deleted.append(ckpt.step)
                log.info("retention: deleted checkpoint step %d", ckpt.step)
    return deleted


def remove_stale_temporaries(
    run_dir: Path, *, older_than: float, in_flight: Collection[Path] = ()
) -> list[Path]:
    """Remove temporaries (crashed or abandoned writes) last modified before ``older_than`` (epoch s)."""
    removed: list[Path] = []
    busy = {p.resolve() for p in in_flight}
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX) or Path(entry.path).resolve() in busy:
            continue
        if is_quarantined(entry.name):  # a checkpoint moved aside by an earlier version: keep it
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime > older_than:
                continue
            if entry.is_dir(follow_symlinks=False):
                _rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError as e:
            log.warning("retention: could not remove temporary %s (%s)", entry.path, e)
    return removed
