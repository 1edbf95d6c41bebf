"""Heartbeat files: what each rank was doing, readable by the others when the job stalls.

One JSON file per rank, ``<checkpoint_dir>/<run>/.watchdog/<job key>/rank-<r>.json``, replaced
atomically every few seconds by that rank's watchdog (``worker.watchdog``). Fields: ``rank``,
``host``, ``pid``, ``phase`` (``shared.events.HangPhase``), ``step``, ``doing`` (``reading data``,
``computing`` or empty), ``since`` (Unix time the phase began), ``limit`` (seconds the phase may
take), ``hung`` (the rank's watchdog tripped), ``reported`` (it sent the ``hung`` report) and
``written_at``.

The checkpoint directory is used because every rank can see it (DCP needs that already), while a
c10d store lives in rank 0's process and stops answering when rank 0 is the one stopped.

A heartbeat older than ``stale_after`` means the rank is not running at all: stopped, frozen, or its
node is gone. From the files a tripped watchdog tells who stalled the job (``suspects``), whether a
peer is only busy within its own limit (``busy_peer``: wait for it), and who reports
(``reporting_rank``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import envvars
from shared.events import HangPhase
from shared.paths import WATCHDOG_DIRNAME

if TYPE_CHECKING:
    from worker.distributed import DistInfo

log = logging.getLogger("pyrecover.worker")

READING_DATA = "reading data"
COMPUTING = "computing"
_PHASES = frozenset(p.value for p in HangPhase)
_MAX_SUSPECTS = 64
_ABANDONED_AFTER_S = 86_400.0


def this_host() -> str:
    """The SLURM node name where there is one (several nodes may share a host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class HeartbeatBoard:
    """The heartbeat directory of one job, seen from one rank."""

    def __init__(self, directory: Path, *, rank: int, world_size: int, stale_after: float) -> None:
        self.directory = directory
        self.rank = rank
        self.world_size = world_size
        self.stale_after = stale_after

    def path(self, rank: int) -> Path:
        return self.directory / f"rank-{rank}.json"

    def write(self, beat: dict[str, Any]) -> None:
        """Atomically replace this rank's file. Never creates the directory, never raises: a full or
        stalled file system must not take the watchdog down with it."""
        path = self.path(self.rank)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("watchdog: cannot write the heartbeat %s: %s", path, exc)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path(self.rank).unlink()

    def read_others(self) -> dict[int, dict[str, Any]]:
        """Every other rank's last heartbeat (absent: never written, or unreadable)."""
        found: dict[int, dict[str, Any]] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            try:
                data = json.loads(self.path(rank).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                found[rank] = data
        return found

    def age(self, beat: dict[str, Any] | None, now: float) -> float | None:
        written = _number(beat.get("written_at")) if beat else None
        return None if written is None else now - written

    def running(self, beat: dict[str, Any] | None, now: float) -> bool:
        age = self.age(beat, now)
        return age is not None and age <= self.stale_after

    def busy_peer(self, peers: dict[int, dict[str, Any]], *, phase: HangPhase, step: int) -> int | None:
        """A running peer in another phase (or step) than ours that is still within its own limit:
        we are only waiting for it (rank 0 committing a background save, say)."""
        now = time.time()
        for rank, beat in sorted(peers.items()):
            if not self.running(beat, now) or beat.get("hung"):
                continue
            if beat.get("phase") == phase.value and beat.get("step") == step:
                continue  # in the same place as us: it waits as we do
            since, limit = _number(beat.get("since")), _number(beat.get("limit"))
            if since is not None and limit is not None and now - since <= limit:
                return rank
        return None

    def pending(self, peers: dict[int, dict[str, Any]]) -> list[int]:
        """Running peers whose watchdog has not tripped (yet)."""
        now = time.time()
        return [
            r
            for r in range(self.world_size)
            if r != self.rank and self.running(peers.get(r), now) and not peers[r].get("hung")
        ]

    def reporting_rank(self, peers: dict[int, dict[str, Any]]) -> int:
        """Rank 0 reports while it runs; otherwise the lowest rank that still does."""
        now = time.time()
        for rank in range(self.world_size):
            if rank == self.rank or self.running(peers.get(rank), now):
                return rank
        return self.rank

    def reported_by(self, peers: dict[int, dict[str, Any]]) -> int | None:
        """A peer that already reported the hang, running or not (its last heartbeat says so)."""
        return next((rank for rank, beat in sorted(peers.items()) if beat.get("reported") is True), None)

    def suspects(self, mine: dict[str, Any], peers: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """The ranks that stalled the job, as ``shared.schemas.HungRank`` dicts (empty: every rank
        waits on another, a deadlock). Ranks not running come first (a stopped process, a lost
        node), then ranks stuck reading data, then ranks behind the others (an earlier step)."""
        now = time.time()
        beats: dict[int, dict[str, Any] | None] = {r: peers.get(r) for r in range(self.world_size)}
        beats[self.rank] = mine
        running = {r: b for r, b in beats.items() if b is not None and self.running(b, now)}
        out: list[dict[str, Any]] = []
        for rank, beat in sorted(beats.items()):
            if rank not in running:
                why = "not running (no heartbeat: stopped, frozen, or its node is gone)"
                out.append(_suspect(rank, beat, self.age(beat, now), why))
        top = max((b.get("step") or 0 for b in running.values()), default=0)
        for rank, beat in sorted(running.items()):
            age = self.age(beat, now)
            if beat.get("doing") == READING_DATA and beat.get("phase") == HangPhase.STEP.value:
                out.append(_suspect(rank, beat, age, "stuck reading data"))
            elif (beat.get("step") or 0) < top:
                out.append(_suspect(rank, beat, age, f"behind (step {beat.get('step')}, others at {top})"))
        return out[:_MAX_SUSPECTS]


def _suspect(rank: int, beat: dict[str, Any] | None, age: float | None, reason: str) -> dict[str, Any]:
    """One ``HungRank``; a heartbeat file is another process's output, so every field is checked."""
    beat = beat or {}
    step = beat.get("step")
    return {
        "rank": rank,
        "host": str(beat.get("host") or "unknown")[:256],
        "phase": beat.get("phase") if beat.get("phase") in _PHASES else None,
        "step": step if isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 2**31 else None,
        "doing": str(beat.get("doing") or "")[:256],
        "heartbeat_age_seconds": round(age, 3) if age is not None and 0 <= age < 1e8 else None,
        "reason": reason,
    }


def new_job_key() -> str:
    """A key unique to this job (rank 0 makes it, every rank uses it): old jobs' heartbeats never mix in."""
    attempt = os.environ.get(envvars.ATTEMPT, "")
    prefix = f"a{int(attempt):04d}-" if attempt.isdigit() and len(attempt) < 10 else ""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def prune_abandoned(root: Path, *, older_than: float = _ABANDONED_AFTER_S) -> list[Path]:
    """Remove job directories under ``root`` (``.watchdog``) left by killed attempts: no stack dump
    in them (a hang's evidence is kept) and nothing written for ``older_than`` seconds."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        jobs = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return removed
    for job in jobs:
        try:
            entries = list(job.iterdir())
            if any(e.name.startswith("stacks-") for e in entries):
                continue
            newest = max([job.stat().st_mtime, *(e.stat().st_mtime for e in entries)])
        except OSError:
            continue
        if newest < cutoff:
            shutil.rmtree(job, ignore_errors=True)
            removed.append(job)
    return removed


def open_job_directory(run_dir: Path, *, info: DistInfo, enabled: bool) -> tuple[Path | None, bool]:
    """Collective: rank 0 creates ``<run_dir>/.watchdog/<job key>/`` and broadcasts it.

    Returns (the directory, or None when disabled or not creatable; whether rank 0 created the run
    directory itself, so a failed start can remove it again).
    """
    decision: tuple[str, str, bool] | None = None
    if info.rank == 0:
        created = not run_dir.exists()
        decision = ("off", "hang_detection is off", False)
        if enabled:
            prune_abandoned(run_dir / WATCHDOG_DIRNAME)
            directory = run_dir / WATCHDOG_DIRNAME / new_job_key()
            try:
                directory.mkdir(parents=True)
                decision = ("ok", str(directory), created)
            except OSError as exc:
                decision = ("off", f"cannot create {directory}: {exc}", False)
    if info.is_distributed:
        import torch.distributed as dist

        box: list[Any] = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    assert decision is not None
    status, value, created = decision
    if status != "ok":
        if enabled:
            log.warning("watchdog: hang detection is off: %s", value)
        return None, False
    return Path(value), created and info.rank == 0
