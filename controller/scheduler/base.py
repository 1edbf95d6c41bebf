"""The scheduler interface every backend implements (``local``, ``slurm``, optional ``pyslurm``).

Backends only translate: they never decide whether a run continues (that is the reconciler's
job, from the run's progress), and they never touch the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.schemas import ResourcesSpec
from shared.states import SchedulerJobState


class SchedulerError(Exception):
    """The scheduler refused or failed an operation; the message is the scheduler's own words."""


def job_name_for(run_id: int, attempt: int) -> str:
    """Deterministic job name, so a controller restarted between submit and record can find the job."""
    return f"pyrecover-r{run_id}-a{attempt}"


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything a backend needs to start one attempt of a run."""

    run_id: int
    run_name: str
    attempt: int
    job_name: str
    argv: Sequence[str]
    """The worker command for one rank, e.g. ``[python, -m, worker, --dataset, ...]``; backends quote it."""
    env: Mapping[str, str]
    """PYRECOVER_* variables and the user's extra environment; never a secret (tokens go by file)."""
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The run's secret environment values: backends hand them to the job without writing them into
    a script or a log (SLURM: a 0600 file the script sources; local: the process environment)."""
    resources: ResourcesSpec
    workdir: Path
    stdout: Path
    stderr: Path
    dependency: str | None = None
    """External id of a job this one must wait for (``--dependency=afterany:<id>``)."""
    exclude: Sequence[str] = ()
    """Hosts the job must not run on (the run's exclusion list, ``--exclude``); backends without
    hosts (``local``) ignore it."""


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    job_id: str
    state: SchedulerJobState
    exit_code: int | None = None
    reason: str | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    deadline: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Scheduler(Protocol):
    name: str
    """The registry name the backend was made for (``local``, ``slurm``, ``pyslurm``)."""
    supports_dependencies: bool
    """Whether ``submit`` honours ``JobSpec.dependency`` (start only after that job ended, as
    ``--dependency=afterany:<id>``). The reconciler pre-queues a successor only where it does;
    a backend that cannot must say ``False`` and refuses a spec that asks for one."""

    def submit(self, spec: JobSpec) -> str:
        """Start (or queue) the job; return its external id. Raise ``SchedulerError`` on refusal."""
        ...

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Status of many jobs in one call. A job the scheduler no longer knows is ``LOST``."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the scheduler to stop the job; idempotent for jobs already ended."""
        ...

    def find_by_name(self, job_name: str) -> str | None:
        """External id of a live or recently ended job with this name, if any (crash recovery)."""
        ...


@runtime_checkable
class NodeInventory(Protocol):
    """A backend that can list the nodes a job may land on (``slurm``): optional.

    The reconciler narrows a node failure to the nodes that went down, and decides whether a run
    with excluded hosts still fits, only where the backend implements this."""

    def node_states(self, partition: str | None) -> dict[str, str]:
        """Every node of ``partition`` (``None``: the default one) and its state as sinfo's ``%T``
        prints it (``idle``, ``mixed``, ``down*``). Raise ``SchedulerError`` when it cannot tell."""
        ...
