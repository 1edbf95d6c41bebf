from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.scheduler.base import Scheduler, SchedulerError
from controller.scheduler.local import LocalScheduler
from controller.scheduler.registry import local_state_dir, make_scheduler, supports_dependencies


def test_local_backend_from_settings(tmp_path: Path) -> None:
    settings = SimpleNamespace(data_dir=tmp_path, local_kill_wait_s=3.0, local_signal_lead_s=None)
    sched = make_scheduler("local", settings)
    assert isinstance(sched, LocalScheduler) and isinstance(sched, Scheduler)
    assert sched.kill_wait_s == 3.0 and sched.signal_lead_s is None
    assert sched.state_dir == local_state_dir(tmp_path) and sched.state_dir.is_dir()


def test_slurm_backend_is_importable_lazily(tmp_path: Path) -> None:
    sched = make_scheduler("slurm", SimpleNamespace(data_dir=tmp_path))
    assert sched.name == "slurm"


def test_unknown_backend() -> None:
    with pytest.raises(SchedulerError, match="unknown scheduler 'pbs'"):
        make_scheduler("pbs", SimpleNamespace())


def test_dependency_support(tmp_path: Path) -> None:
    assert not supports_dependencies(make_scheduler("local", SimpleNamespace(data_dir=tmp_path)))
    assert supports_dependencies(make_scheduler("slurm", SimpleNamespace(data_dir=tmp_path)))
