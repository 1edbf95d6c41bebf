"""Optional ``pyslurm`` backend: the ``slurm`` backend's contract on the Python bindings.

``pip install 'pyrecover[pyslurm]'``. pyslurm must match the cluster's ``libslurm`` exactly (PyPI
carries it for Slurm 25.11, none for 22.05), so the CLI backend (``controller/scheduler/slurm.py``)
stays the default; this one saves a process fork per call on clusters where the bindings fit.
``pyslurm`` is imported when the backend is constructed, never at module import.

Uses pyslurm's documented API only: ``JobSubmitDescription(script=..., working_directory=...,
environment=...)`` + ``load_sbatch_options()`` + ``submit()`` (the same rendered script as the CLI
backend, so the ``#SBATCH`` options are identical), ``Jobs.load()`` (one RPC for every job),
``Job(id).cancel()`` and ``RPCError``. States, reasons and exit codes go through ``slurm_parse``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.scheduler import slurm_parse as sp
from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from controller.scheduler.slurm import SlurmScheduler, cli_env
from controller.settings import Settings
from shared.states import SchedulerJobState

log = logging.getLogger(__name__)

PYSLURM_SLURM_VERSION = "25.11"
"""The Slurm release the pinned pyslurm (``pyrecover[pyslurm]``: ``pyslurm>=25.11``) is built for."""


def _epoch(value: Any) -> float | None:
    """pyslurm returns Unix seconds (int) or None/0 for "not set"."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


class PyslurmScheduler:
    """``Scheduler`` on top of pyslurm; constructed like ``SlurmScheduler`` (settings or kwargs)."""

    name = "pyslurm"
    supports_dependencies = True  # the rendered script carries ``--dependency=afterany:<id>``

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        prologue: Sequence[str] | None = None,
        srun_args: Sequence[str] | None = None,
        signal: str = "USR1",
        module: Any = None,
    ) -> None:
        """``module``: an already imported pyslurm (tests); by default ``import pyslurm`` happens here."""
        if module is None:
            try:
                module = importlib.import_module("pyslurm")
            except ImportError as exc:
                raise SchedulerError(
                    f"the pyslurm scheduler backend cannot import pyslurm ({exc}): install "
                    f"pyrecover[pyslurm]; pyslurm needs Slurm {PYSLURM_SLURM_VERSION} (its version must "
                    "match the cluster's libslurm). The 'slurm' backend (CLI) needs nothing extra."
                ) from exc
        self._pyslurm = module
        # Script rendering and the script's location are shared with the CLI backend.
        self._cli = SlurmScheduler(settings, prologue=prologue, srun_args=srun_args, signal=signal)

    def _rpc_error(self) -> type[BaseException]:
        err = getattr(self._pyslurm, "RPCError", None)
        return err if isinstance(err, type) and issubclass(err, BaseException) else RuntimeError

    def submit(self, spec: JobSpec) -> str:
        path: Path = self._cli.write_script(spec)
        desc = self._pyslurm.JobSubmitDescription(
            script=str(path),
            working_directory=str(spec.workdir),
            # Like the CLI backend's minimal environment: never the controller's secrets.
            environment=cli_env(),
        )
        try:
            desc.load_sbatch_options()
            job_id = desc.submit()
        except self._rpc_error() as exc:
            raise SchedulerError(f"pyslurm submit failed: {exc}") from exc
        except ValueError as exc:  # pyslurm validates options before the RPC
            raise SchedulerError(f"pyslurm refused the job description: {exc}") from exc
        log.info("submitted %s as SLURM job %s via pyslurm (%s)", spec.job_name, job_id, path)
        return str(job_id)

    def _load(self) -> dict[str, Any]:
        try:
            jobs = self._pyslurm.Jobs.load()
        except self._rpc_error() as exc:
            raise SchedulerError(f"pyslurm could not load jobs: {exc}") from exc
        return {str(job.id): job for job in jobs.values()}

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(str(i) for i in job_ids))
        if not ids:
            return {}
        known = self._load()
        out: dict[str, JobStatus] = {}
        for job_id in ids:
            job = known.get(job_id)
            if job is None:
                out[job_id] = JobStatus(
                    job_id=job_id,
                    state=SchedulerJobState.LOST,
                    reason="SLURM no longer knows this job (not in pyslurm.Jobs.load())",
                )
                continue
            state = sp.parse_state(str(job.state))
            live = not state.state.finished
            end = _epoch(job.end_time)
            sig = job.exit_code_signal or 0
            extra = {"slurm_state": state.raw}
            if sig:
                extra["signal"] = str(sig)
            out[job_id] = JobStatus(
                job_id=job_id,
                state=state.state,
                exit_code=None if live else sp.shell_exit_code(job.exit_code, sig),
                reason=sp.normalize_reason(job.state_reason),
                submit_time=_epoch(job.submit_time),
                start_time=_epoch(job.start_time),
                end_time=None if live else end,
                deadline=end if state.state is SchedulerJobState.RUNNING else None,
                extra=extra,
            )
        return out

    def cancel(self, job_id: str) -> None:
        if not str(job_id).isdigit():
            raise SchedulerError(f"not a SLURM job id: {job_id!r}")
        try:
            # pyslurm ignores "already done" and "invalid id" (purged) for a cancel itself.
            self._pyslurm.Job(int(job_id)).cancel()
        except self._rpc_error() as exc:
            if sp.invalid_job_id(str(exc)) or "already completing or completed" in str(exc).lower():
                return
            raise SchedulerError(f"pyslurm cancel failed: {exc}") from exc

    def find_by_name(self, job_name: str) -> str | None:
        ids = [job_id for job_id, job in self._load().items() if job.name == job_name and job_id.isdigit()]
        return max(ids, key=int) if ids else None
