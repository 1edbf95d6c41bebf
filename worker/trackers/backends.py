"""The tracker backends: TensorBoard event files and W&B runs, behind one small interface.

Each is created on the trackers' own thread (``worker.trackers.hub``), never on the training
thread: importing TensorBoard takes seconds and ``wandb.init`` starts a service process. Failures
propagate to the hub, which turns them into one warning and stops using the backend.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .wandb_env import WandbEnv


class Backend(Protocol):
    name: str

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardBackend:
    """Scalars in ``<trackers>/tensorboard/``: one event file per attempt, one series per metric.

    TensorBoard reads every event file of a directory as one run, so the attempts of a pyrecover
    run form one series; the hub guarantees each step appears in only one of them.
    """

    name = "tensorboard"

    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        directory.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(directory))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()  # what is logged is on disk before the next step is marked

    def close(self) -> None:
        self._writer.close()


def _supported(settings_cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The settings this wandb version knows (an unknown key would fail the whole init)."""
    fields = getattr(settings_cls, "model_fields", None)
    return values if fields is None else {k: v for k, v in values.items() if k in fields}


class WandbBackend:
    """One W&B run per pyrecover run: ``id`` = the persisted tracker run id, ``resume="allow"``.

    Offline unless ``WANDB_MODE=online`` (``wandb sync <trackers>/wandb/wandb/offline-run-*`` uploads
    later). Its directories, run id, executable and settings file are pinned here, never taken from
    ``WANDB_*`` variables (``worker.trackers.wandb_env``).
    """

    name = "wandb"

    def __init__(
        self, *, directory: Path, run_id: str, run_name: str, env: WandbEnv, config: Mapping[str, Any]
    ) -> None:
        import wandb

        for path in (directory, *env.dirs):
            path.mkdir(parents=True, exist_ok=True)
        pinned = {
            "settings_system": str(env.system_settings),
            "x_executable": sys.executable,
            "console": "off",
            "silent": True,
            "quiet": True,
            "x_disable_stats": True,
            "x_disable_machine_info": True,
            "disable_git": True,
            "save_code": False,
            "sagemaker_disable": True,
            "x_disable_update_check": True,
        }
        settings = wandb.Settings(**_supported(wandb.Settings, pinned))
        wandb.setup(settings=settings)  # the system settings file is chosen once, at set-up
        self._run = wandb.init(
            project=env.project,
            entity=env.entity,
            id=run_id,
            name=run_name,
            resume="allow",
            dir=str(directory),
            mode=env.mode,
            config=dict(config),
            settings=settings,
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()
