"""``PyslurmScheduler`` against a fake ``pyslurm`` that follows pyslurm's documented API (25.11).

Documented surface used: ``JobSubmitDescription(**attrs)``, ``.load_sbatch_options()``,
``.submit() -> int``; ``Jobs.load()`` (a mapping of ``Job``); ``Job(job_id).cancel()``; ``Job``
attributes ``id, name, state, state_reason, exit_code, exit_code_signal, submit_time, start_time,
end_time`` (Unix seconds or None); ``RPCError``.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.scheduler.base import JobSpec, Scheduler, SchedulerError
from controller.scheduler.pyslurm_backend import PyslurmScheduler
from shared.schemas import ResourcesSpec
from shared.states import SchedulerJobState as S


class RPCError(Exception):
    pass


@dataclass
class FakeJob:
    id: int
    name: str = ""
    state: str = "PENDING"
    state_reason: str | None = "None"
    exit_code: int | None = 0
    exit_code_signal: int | None = 0
    submit_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None


class FakePyslurm(types.ModuleType):
    """Just enough of pyslurm, keeping what the backend did for the assertions."""

    def __init__(self) -> None:
        super().__init__("pyslurm")
        self.jobs: dict[int, FakeJob] = {}
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[int] = []
        self.submit_error: Exception | None = None
        self.load_error: Exception | None = None
        self.RPCError = RPCError
        fake = self

        class JobSubmitDescription:
            def __init__(self, **kwargs: Any) -> None:
                self.attrs = dict(kwargs)

            def load_sbatch_options(self, overwrite: bool = False) -> None:
                for line in Path(self.attrs["script"]).read_text().splitlines():
                    if line.startswith("#SBATCH --job-name="):
                        self.attrs.setdefault("name", line.split("=", 1)[1])

            def submit(self) -> int:
                if fake.submit_error is not None:
                    raise fake.submit_error
                job_id = 100 + len(fake.submitted)
                fake.submitted.append(self.attrs)
                fake.jobs[job_id] = FakeJob(id=job_id, name=self.attrs.get("name", ""))
                return job_id

        class Jobs(dict[int, FakeJob]):
            @staticmethod
            def load(preload_passwd_info: bool = False, frozen: bool = False) -> Jobs:
                if fake.load_error is not None:
                    raise fake.load_error
                return Jobs(fake.jobs)

        class Job:
            def __init__(self, job_id: int) -> None:
                self.id = job_id

            def cancel(self) -> None:
                fake.cancelled.append(self.id)
                if self.id == 666:
                    raise RPCError("Unable to contact slurm controller (connect failure)")

        self.JobSubmitDescription = JobSubmitDescription
        self.Jobs = Jobs
        self.Job = Job


@pytest.fixture
def fake() -> FakePyslurm:
    return FakePyslurm()


def make_spec(tmp_path: Path) -> JobSpec:
    return JobSpec(
        run_id=5,
        run_name="demo",
        attempt=1,
        job_name="pyrecover-r5-a1",
        argv=["python", "-m", "worker"],
        env={"PYRECOVER_RUN_ID": "5"},
        resources=ResourcesSpec(scheduler="slurm", time_limit="30"),
        workdir=tmp_path,
        stdout=tmp_path / "logs" / "attempt-0001.out",
        stderr=tmp_path / "logs" / "attempt-0001.err",
    )


def test_missing_pyslurm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", None)  # makes `import pyslurm` raise ImportError
    with pytest.raises(SchedulerError, match=r"install pyrecover\[pyslurm\]; pyslurm needs Slurm 25\.11"):
        PyslurmScheduler()


def test_imports_pyslurm_lazily_from_sys_modules(monkeypatch: pytest.MonkeyPatch, fake: FakePyslurm) -> None:
    monkeypatch.setitem(sys.modules, "pyslurm", fake)
    sched = PyslurmScheduler()
    assert isinstance(sched, Scheduler)
    assert sched.name == "pyslurm" and sched.supports_dependencies is True


def test_submit_uses_rendered_script_and_minimal_env(
    tmp_path: Path, fake: FakePyslurm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRECOVER_DATABASE_URL", "postgresql://u:secret@db/x")
    sched = PyslurmScheduler(module=fake)
    job_id = sched.submit(make_spec(tmp_path))
    assert job_id == "100"
    attrs = fake.submitted[0]
    script = Path(attrs["script"])
    assert script.read_text().startswith("#!/bin/bash\n")
    assert "#SBATCH --no-requeue" in script.read_text()
    assert attrs["name"] == "pyrecover-r5-a1", "options come from the script's #SBATCH lines"
    assert attrs["working_directory"] == str(tmp_path)
    assert "PYRECOVER_DATABASE_URL" not in attrs["environment"]
    assert attrs["environment"]["TZ"] == "UTC"


def test_submit_rpc_error_carries_slurm_message(tmp_path: Path, fake: FakePyslurm) -> None:
    fake.submit_error = RPCError("Invalid partition name specified")
    with pytest.raises(SchedulerError, match="Invalid partition name specified"):
        PyslurmScheduler(module=fake).submit(make_spec(tmp_path))


def test_poll_maps_states_exit_codes_and_lost(fake: FakePyslurm) -> None:
    fake.jobs = {
        1: FakeJob(id=1, state="PENDING", state_reason="Dependency", submit_time=1000),
        2: FakeJob(id=2, state="RUNNING", submit_time=1000, start_time=1010, end_time=1070),
        3: FakeJob(id=3, state="COMPLETED", start_time=1010, end_time=1050),
        4: FakeJob(id=4, state="FAILED", state_reason="NonZeroExitCode", exit_code=3),
        5: FakeJob(id=5, state="TIMEOUT", state_reason="TimeLimit", exit_code=0, exit_code_signal=15),
        6: FakeJob(id=6, state="OUT_OF_MEMORY", exit_code=0, exit_code_signal=9),
        7: FakeJob(id=7, state="NODE_FAIL"),
        8: FakeJob(id=8, state="PREEMPTED"),
        9: FakeJob(id=9, state="COMPLETING"),
    }
    got = PyslurmScheduler(module=fake).poll([str(i) for i in range(1, 11)])
    assert {k: v.state for k, v in got.items()} == {
        "1": S.PENDING,
        "2": S.RUNNING,
        "3": S.COMPLETED,
        "4": S.FAILED,
        "5": S.TIMEOUT,
        "6": S.OUT_OF_MEMORY,
        "7": S.NODE_FAIL,
        "8": S.PREEMPTED,
        "9": S.RUNNING,
        "10": S.LOST,
    }
    assert got["1"].reason == "Dependency" and got["1"].start_time is None
    assert (got["2"].deadline, got["2"].end_time, got["2"].exit_code) == (1070.0, None, None)
    assert (got["3"].exit_code, got["3"].end_time) == (0, 1050.0)
    assert got["4"].exit_code == 3
    assert (got["5"].exit_code, got["5"].extra["signal"]) == (143, "15")
    assert got["3"].reason is None


def test_poll_rpc_error(fake: FakePyslurm) -> None:
    fake.load_error = RPCError("Unable to contact slurm controller")
    with pytest.raises(SchedulerError, match="Unable to contact"):
        PyslurmScheduler(module=fake).poll(["1"])
    assert PyslurmScheduler(module=fake).poll([]) == {}


def test_cancel_and_find_by_name(tmp_path: Path, fake: FakePyslurm) -> None:
    sched = PyslurmScheduler(module=fake)
    first = sched.submit(make_spec(tmp_path))
    second = sched.submit(make_spec(tmp_path))
    assert sched.find_by_name("pyrecover-r5-a1") == second != first
    assert sched.find_by_name("pyrecover-r5-a9") is None
    sched.cancel(second)
    assert fake.cancelled == [int(second)]
    with pytest.raises(SchedulerError, match="connect failure"):
        sched.cancel("666")
    with pytest.raises(SchedulerError, match="not a SLURM job id"):
        sched.cancel("1;2")


def test_dependency_reaches_the_script_pyslurm_loads(tmp_path: Path, fake: FakePyslurm) -> None:
    import dataclasses

    sched = PyslurmScheduler(module=fake)
    sched.submit(dataclasses.replace(make_spec(tmp_path), dependency="41"))
    script = Path(fake.submitted[0]["script"]).read_text()
    assert "#SBATCH --dependency=afterany:41" in script.splitlines()
