"""``make_scheduler(name, settings)``: the backend a run's ``resources.scheduler`` names.

Backends are imported lazily, so a controller that only ever uses ``local`` never imports the
SLURM code (and the other way round). ``pyslurm`` is optional: its bindings are imported only when
that backend is made, and a controller without them refuses it with the fix in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from controller.scheduler.base import Scheduler, SchedulerError

if TYPE_CHECKING:
    from controller.settings import Settings

SCHEDULER_NAMES = ("local", "slurm", "pyslurm")


def local_state_dir(data_dir: Path) -> Path:
    """Where the local backend keeps one JSON state file per job (adopted after a restart)."""
    return Path(data_dir) / "local-jobs"


def make_scheduler(name: str, settings: Settings) -> Scheduler:
    """A new backend instance configured from the controller's settings. Unknown names raise."""
    if name == "local":
        from controller.scheduler.local import LocalScheduler

        return LocalScheduler(
            local_state_dir(settings.data_dir),
            kill_wait_s=settings.local_kill_wait_s,
            signal_lead_s=settings.local_signal_lead_s,
        )
    if name == "slurm":
        from controller.scheduler.slurm import SlurmScheduler

        return SlurmScheduler(settings)
    if name == "pyslurm":
        from controller.scheduler.pyslurm_backend import PyslurmScheduler

        return PyslurmScheduler(settings)  # raises SchedulerError naming the fix without pyslurm
    raise SchedulerError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULER_NAMES)})")


def supports_dependencies(scheduler: Scheduler) -> bool:
    """Whether a backend can queue a job behind another (``afterany``); the local one cannot.

    Every backend declares it (``Scheduler.supports_dependencies``); one that does not is a bug,
    reported here rather than guessed from its name.
    """
    declared = getattr(scheduler, "supports_dependencies", None)
    if not isinstance(declared, bool):
        raise TypeError(
            f"scheduler backend {type(scheduler).__name__} ({scheduler.name!r}) must declare "
            f"supports_dependencies as a bool, got {declared!r}"
        )
    return declared
