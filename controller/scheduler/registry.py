"""``make_scheduler(name, settings)``: the backend a run's ``resources.scheduler`` names.

Backends are imported lazily, so a controller that only ever uses ``local`` never imports the
SLURM code (and the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.scheduler.base import Scheduler, SchedulerError

SCHEDULER_NAMES = ("local", "slurm")


def local_state_dir(data_dir: Path) -> Path:
    """Where the local backend keeps one JSON state file per job (adopted after a restart)."""
    return Path(data_dir) / "local-jobs"


def make_scheduler(name: str, settings: Any) -> Scheduler:
    """A new backend instance; ``settings`` is the controller's ``Settings``. Unknown names raise."""
    if name == "local":
        from controller.scheduler.local import LocalScheduler

        lead = getattr(settings, "local_signal_lead_s", 0.0)
        return LocalScheduler(
            local_state_dir(settings.data_dir),
            kill_wait_s=float(getattr(settings, "local_kill_wait_s", 30.0)),
            signal_lead_s=None if lead is None else float(lead),
        )
    if name == "slurm":
        from controller.scheduler.slurm import SlurmScheduler

        return SlurmScheduler(settings)
    raise SchedulerError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULER_NAMES)})")


def supports_dependencies(scheduler: Scheduler) -> bool:
    """Whether a backend can queue a job behind another (``afterany``); the local one cannot."""
    return bool(getattr(scheduler, "supports_dependencies", scheduler.name != "local"))
