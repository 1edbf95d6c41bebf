"""When must this attempt stop? Deadline sources and the stop policy.

Sources, in docs/architecture.md's order after the ``--deadline`` flag: ``PYRECOVER_DEADLINE``,
``SLURM_JOB_END_TIME`` (Slurm >= 23.02), ``squeue -h -j $SLURM_JOB_ID -o %e`` (Slurm 22.05), none.
They are re-read every ``refresh_seconds`` because an admin may extend (or cut) a time limit.

The policy stops *before* a step when the time left after one more step would not cover the final
save, the exit after it (reporter flush, rank barrier, process-group teardown: bounded by the
worker's ``exit_allowance``, see ``worker.shutdown``) and a margin. Step time is a high quantile
over a recent window after warm-up (a compiled or autotuned first step never poisons it, unlike
the seed's running max); the save time comes from measured saves, or before the first one from
the state's size and a measured write bandwidth.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from shared import envvars

log = logging.getLogger("pyrecover.worker")

Clock = Callable[[], float]
_SQUEUE_NONE = {"", "N/A", "NONE", "UNKNOWN", "UNLIMITED", "INVALID"}


def parse_squeue_end_time(text: str) -> float | None:
    """``squeue -o %e`` prints local time ``2026-11-28T21:30:00`` (or N/A / Unknown): → Unix seconds."""
    text = text.strip().splitlines()[0].strip() if text.strip() else ""
    if text.upper() in _SQUEUE_NONE:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        log.warning("cannot parse squeue end time %r", text)
        return None


def _parse_float(name: str, value: str) -> float | None:
    try:
        parsed = float(value)
    except ValueError:
        log.warning("ignoring %s=%r: not Unix seconds", name, value)
        return None
    if not math.isfinite(parsed) or parsed <= 0:
        log.warning("ignoring %s=%r: not a positive time", name, value)
        return None
    return parsed


def read_deadline(
    *, override: float | None, env: Mapping[str, str], squeue_timeout: float = 10.0
) -> tuple[float | None, str]:
    """The deadline (Unix seconds) and the name of the source it came from ("none" when unknown)."""
    if override is not None:
        return override, "--deadline"
    for name in (envvars.DEADLINE, envvars.SLURM_JOB_END_TIME):
        value = env.get(name)
        if value:
            parsed = _parse_float(name, value)
            if parsed is not None:
                return parsed, name
    job_id = env.get(envvars.SLURM_JOB_ID)
    if job_id:
        try:
            proc = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%e"],
                capture_output=True,
                text=True,
                timeout=squeue_timeout,
                env=dict(env),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("squeue for the job end time failed: %s", exc)
        else:
            if proc.returncode == 0:
                end = parse_squeue_end_time(proc.stdout)
                if end is not None:
                    return end, "squeue"
            else:
                log.warning("squeue exited %d: %s", proc.returncode, proc.stderr.strip()[:200])
    return None, "none"


class DeadlineTracker:
    """The current deadline, re-read from its sources every ``refresh_seconds``, never later than
    a cap set by ``tighten`` (the walltime warning signal, ``worker.signals.backstop``)."""

    def __init__(
        self,
        *,
        override: float | None,
        refresh_seconds: float = 60.0,
        env: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._override = override
        self._refresh = refresh_seconds
        self._env = env if env is not None else os.environ
        self._clock = clock
        self.deadline, self.source = read_deadline(override=override, env=self._env)
        self._read_at = clock()
        self.cap: float | None = None

    def current(self) -> float | None:
        """The deadline, refreshed when the last read is older than ``refresh_seconds``."""
        now = self._clock()
        if now - self._read_at >= self._refresh:
            self.refresh()
        return self.deadline

    def refresh(self) -> float | None:
        """Re-read the sources now; the cap still applies."""
        self._read_at = self._clock()
        deadline, source = read_deadline(override=self._override, env=self._env)
        if self.cap is not None and (deadline is None or self.cap < deadline):
            deadline, source = self.cap, "signal"
        if deadline != self.deadline:
            log.info("deadline changed: %s (%s) -> %s (%s)", self.deadline, self.source, deadline, source)
        self.deadline, self.source = deadline, source
        return self.deadline

    def tighten(self, cap: float) -> None:
        """From now on the deadline is at most ``cap`` (Unix seconds), whatever the sources say."""
        if self.cap is not None and self.cap <= cap:
            return
        self.cap = cap
        if self.deadline is None or cap < self.deadline:
            log.info(
                "deadline tightened by the walltime signal: %s (%s) -> %s", self.deadline, self.source, cap
            )
            self.deadline, self.source = cap, "signal"


def measure_write_bandwidth(
    directory: Path, nbytes: int = 32 << 20, clock: Clock = time.perf_counter
) -> float:
    """Bytes per second of a write + fsync of ``nbytes`` into ``directory`` (the file is removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".bandwidth-probe-{os.getpid()}"
    block = os.urandom(1 << 20)
    start = clock()
    try:
        with open(probe, "wb") as fh:
            for _ in range(max(1, nbytes >> 20)):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        elapsed = clock() - start
    finally:
        probe.unlink(missing_ok=True)
    return max(nbytes, 1 << 20) / max(elapsed, 1e-6)


class StopPolicy:
    """Decides at a step boundary whether one more step still leaves time for the final save.

    Everything time-related goes through ``clock`` so the policy can be driven by a fake clock.
    """

    def __init__(
        self,
        *,
        margin: float,
        exit_allowance: float = 0.0,
        clock: Clock = time.time,
        warmup_steps: int = 3,
        window: int = 50,
        quantile: float = 0.9,
        save_safety: float = 1.2,
        first_save_safety: float = 2.0,
        save_overhead: float = 1.0,
    ) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        if exit_allowance < 0:
            raise ValueError(f"exit_allowance must be >= 0, got {exit_allowance}")
        self.margin = margin
        self.exit_allowance = exit_allowance
        self._clock = clock
        self._warmup = warmup_steps
        self._quantile = quantile
        self._save_safety = save_safety
        self._first_save_safety = first_save_safety
        self._save_overhead = save_overhead
        self._steps: deque[float] = deque(maxlen=window)
        self._warmup_max = 0.0
        self._seen_steps = 0
        self._saves: deque[float] = deque(maxlen=8)
        self._state_bytes = 0
        self._bandwidth: float | None = None
        self._step_started: float | None = None

    # --- observations -------------------------------------------------------------------------
    def begin_step(self) -> None:
        self._step_started = self._clock()

    def end_step(self) -> float:
        """Close the step opened by ``begin_step`` (after a device sync on GPU); returns its duration."""
        if self._step_started is None:
            raise RuntimeError("end_step() without begin_step()")
        seconds = self._clock() - self._step_started
        self._step_started = None
        self.record_step(seconds)
        return seconds

    def record_step(self, seconds: float) -> None:
        self._seen_steps += 1
        if self._seen_steps <= self._warmup:
            # Compile / autotune / cache warm-up: remembered only until real samples exist.
            self._warmup_max = max(self._warmup_max, seconds)
        else:
            self._steps.append(seconds)

    def record_save(self, seconds: float) -> None:
        self._saves.append(seconds)

    def set_state_size(self, state_bytes: int, write_bandwidth: float) -> None:
        """Prior for the save time before any save was measured."""
        self._state_bytes = state_bytes
        self._bandwidth = write_bandwidth

    # --- estimates ----------------------------------------------------------------------------
    def step_estimate(self) -> float:
        if not self._steps:
            return self._warmup_max
        # Linear-interpolated quantile of the window (what statistics.quantiles(method="inclusive")
        # gives), computed directly: this runs at every step boundary.
        ordered = sorted(self._steps)
        pos = self._quantile * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    def save_estimate(self) -> float:
        if self._saves:
            return max(self._saves) * self._save_safety + self._save_overhead
        if self._bandwidth:
            return self._state_bytes / self._bandwidth * self._first_save_safety + self._save_overhead
        return self._save_overhead

    def time_needed(self) -> float:
        """Seconds that must remain at a step boundary to run one more step, save, and exit in time."""
        return self.step_estimate() + self.save_estimate() + self.exit_allowance + self.margin

    def should_stop(self, deadline: float | None, now: float | None = None) -> bool:
        if deadline is None:
            return False
        now = self._clock() if now is None else now
        return deadline - now < self.time_needed()
