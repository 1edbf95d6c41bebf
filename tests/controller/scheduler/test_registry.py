from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from controller.scheduler.base import Scheduler, SchedulerError
from controller.scheduler.local import LocalScheduler
from controller.scheduler.pyslurm_backend import PyslurmScheduler
from controller.scheduler.registry import (
    SCHEDULER_NAMES,
    local_state_dir,
    make_scheduler,
    supports_dependencies,
)
from controller.scheduler.slurm import SlurmScheduler
from controller.settings import Settings


def test_local_backend_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, local_kill_wait_s=3.0, local_signal_lead_s=2.5)
    sched = make_scheduler("local", settings)
    assert isinstance(sched, LocalScheduler) and isinstance(sched, Scheduler)
    assert sched.kill_wait_s == 3.0 and sched.signal_lead_s == 2.5
    assert sched.state_dir == local_state_dir(tmp_path) and sched.state_dir.is_dir()


def test_slurm_backend_is_importable_lazily(tmp_path: Path) -> None:
    sched = make_scheduler("slurm", Settings(data_dir=tmp_path))
    assert sched.name == "slurm"


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(SchedulerError, match="unknown scheduler 'pbs'"):
        make_scheduler("pbs", Settings(data_dir=tmp_path))


def test_dependency_support(tmp_path: Path) -> None:
    assert not supports_dependencies(make_scheduler("local", Settings(data_dir=tmp_path)))
    assert supports_dependencies(make_scheduler("slurm", Settings(data_dir=tmp_path)))


@pytest.mark.parametrize("backend", [LocalScheduler, SlurmScheduler, PyslurmScheduler])
def test_every_backend_declares_dependency_support_in_the_class(backend: type) -> None:
    # Declared on the class (not guessed from the name): the reconciler's pre-queue reads it.
    assert isinstance(backend.__dict__.get("supports_dependencies"), bool)
    assert backend.__dict__.get("name") in SCHEDULER_NAMES


def test_a_backend_that_does_not_declare_dependency_support_is_a_bug() -> None:
    undeclared = SimpleNamespace(name="pbs")
    with pytest.raises(TypeError, match="must declare supports_dependencies"):
        supports_dependencies(undeclared)  # type: ignore[arg-type]


def test_pyslurm_is_selectable_and_imported_only_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_pyslurm_backend import FakePyslurm

    monkeypatch.setitem(sys.modules, "pyslurm", FakePyslurm())
    sched = make_scheduler("pyslurm", Settings(data_dir=tmp_path, slurm_prologue=["module load x"]))
    assert isinstance(sched, PyslurmScheduler) and isinstance(sched, Scheduler)
    assert sched.name == "pyslurm" and supports_dependencies(sched)


def test_pyslurm_without_the_bindings_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # `import pyslurm` raises ImportError
    with pytest.raises(SchedulerError, match=r"install pyrecover\[pyslurm\]; pyslurm needs Slurm 25\.11"):
        make_scheduler("pyslurm", Settings(data_dir=tmp_path))


def test_choosing_another_backend_never_imports_pyslurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    make_scheduler("slurm", Settings(data_dir=tmp_path))
    make_scheduler("local", Settings(data_dir=tmp_path))
