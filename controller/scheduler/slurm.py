"""The ``slurm`` scheduler backend: sbatch / squeue / scontrol / sacct / scancel through the CLI.

Works with any Slurm >= 20.11 (no Python bindings needed). Construct it from the controller's
settings or with explicit keyword arguments::

    SlurmScheduler(settings)                      # reads slurm_cli_timeout_s, slurm_prologue, slurm_srun_args
    SlurmScheduler(cli_timeout_s=30, prologue=["module load cuda/12.4"], srun_args=["--mpi=none"])

Contracts:

* every CLI call has a timeout; a non-zero exit, a timeout or a missing binary raises
  ``SchedulerError`` with the tool's own stderr (e.g. sbatch's "invalid partition specified");
* ``poll`` asks ``squeue`` once for all ids, then ``scontrol show job`` for each job that has just
  finished (the exit code lives only there without accounting), then ``sacct`` — where accounting
  storage exists — for jobs squeue no longer lists; a job nobody knows any more is ``LOST``;
* CLIs run with ``TZ=UTC`` (so their timestamps parse unambiguously) and a minimal environment: a job
  submitted with sbatch's default ``--export=ALL`` must not inherit the controller's secrets
  (database URL, tokens).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.scheduler import slurm_parse as sp
from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from controller.scheduler.slurm_render import DEFAULT_TEMPLATE, render_sbatch
from controller.settings import Settings
from shared import envfile, envvars
from shared.run_rules import RunPolicy
from shared.states import SchedulerJobState

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
"""Runs one CLI command with a timeout; the process boundary the unit tests fake."""

DEFAULT_CLI_TIMEOUT_S = 30.0
_PASSTHROUGH_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "SLURM_CONF")


def cli_env() -> dict[str, str]:
    """The environment of every SLURM CLI call (and of the jobs they submit): no controller secrets."""
    env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TZ"] = "UTC"
    return env


def subprocess_runner(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The real runner: no shell, captured output, a minimal environment (see the module docstring)."""
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=cli_env(), stdin=subprocess.DEVNULL
    )


class SlurmScheduler:
    """``Scheduler`` implementation on top of the SLURM command-line tools."""

    name = "slurm"
    supports_dependencies = True  # ``--dependency=afterany:<id>`` in the rendered script

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        cli_timeout_s: float | None = None,
        prologue: Sequence[str] | None = None,
        srun_args: Sequence[str] | None = None,
        signal: str = "USR1",
        template: Path = DEFAULT_TEMPLATE,
        runner: Runner = subprocess_runner,
    ) -> None:
        """Explicit keyword arguments win over ``settings`` attributes, which win over defaults."""
        if settings is not None:
            cli_timeout_s = settings.slurm_cli_timeout_s if cli_timeout_s is None else cli_timeout_s
            prologue = settings.slurm_prologue if prologue is None else prologue
            srun_args = settings.slurm_srun_args if srun_args is None else srun_args
        self.cli_timeout_s = float(DEFAULT_CLI_TIMEOUT_S if cli_timeout_s is None else cli_timeout_s)
        if self.cli_timeout_s <= 0:
            raise ValueError(f"cli_timeout_s must be positive, got {self.cli_timeout_s}")
        # The renderer applies the run rules again with the controller's allow-lists.
        self.policy = settings.run_policy() if settings is not None else RunPolicy(check_roots=False)
        self.prologue = tuple(prologue or ())
        self.srun_args = tuple(srun_args or ())
        self.signal = signal
        self.template = template
        self._run_cmd = runner
        self._accounting: bool | None = None  # unknown until the first sacct call

    # ------------------------------------------------------------------ CLI plumbing

    def _run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = self._run_cmd(argv, self.cli_timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise SchedulerError(f"{argv[0]} did not answer within {self.cli_timeout_s:g} s") from exc
        except OSError as exc:  # binary missing, not executable
            raise SchedulerError(f"cannot run {argv[0]}: {exc}") from exc
        if check and proc.returncode != 0:
            raise SchedulerError(_tool_message(argv[0], proc))
        return proc

    # ------------------------------------------------------------------ Scheduler interface

    def script_path(self, spec: JobSpec) -> Path:
        """Where the attempt's script is written: next to its log files, one file per attempt."""
        return spec.stdout.absolute().parent / f"attempt-{spec.attempt:04d}.sbatch"

    def env_file_path(self, spec: JobSpec) -> Path:
        """The attempt's secret variables (0600), next to its script, which sources it."""
        return spec.stdout.absolute().parent / f"attempt-{spec.attempt:04d}.env"

    def write_script(self, spec: JobSpec) -> Path:
        """Render the attempt's script and write it (atomically) to ``script_path(spec)``.

        Raises ``SchedulerError`` for a spec that cannot be rendered safely or a token file that
        others can read; nothing is written then.
        """
        spec = absolute_paths(spec)
        token_file = spec.env.get(envvars.TOKEN_FILE)
        if token_file is not None:
            _check_private(Path(token_file))
        env_file = self.env_file_path(spec) if spec.secret_env else None
        try:
            script = render_sbatch(
                spec,
                prologue=self.prologue,
                srun_args=self.srun_args,
                env_file=env_file,
                signal=self.signal,
                template=self.template,
                policy=self.policy,
            )
        except ValueError as exc:
            raise SchedulerError(f"cannot render the sbatch script: {exc}") from exc
        path = self.script_path(spec)
        for directory in {path.parent, spec.stdout.parent, spec.stderr.parent}:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if env_file is not None:
            envfile.write(env_file, spec.secret_env)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)  # a script shows the run's paths and environment
            fh.write(script)
        tmp.replace(path)
        return path

    def submit(self, spec: JobSpec) -> str:
        path = self.write_script(spec)
        proc = self._run(["sbatch", "--parsable", str(path)])
        try:
            job_id = sp.parse_sbatch_parsable(proc.stdout)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc
        log.info("submitted %s as SLURM job %s (%s)", spec.job_name, job_id, path)
        return job_id

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(str(i) for i in job_ids))
        if not ids:
            return {}
        numeric = [i for i in ids if i.isdigit()]
        records = self._squeue(numeric) if numeric else {}
        out: dict[str, JobStatus] = {}
        for job_id in ids:
            rec = records.get(job_id)
            if rec is not None and rec.state.state.finished:
                # squeue has no exit code: ask scontrol, which still knows the job for MinJobAge.
                rec = self._scontrol(job_id) or rec
            if rec is not None:
                out[job_id] = _status(rec)
        missing = [i for i in numeric if i not in out]
        if missing:
            for job_id, rec in self._sacct(missing).items():
                if job_id in missing:
                    out[job_id] = _status(rec)
        for job_id in ids:
            if job_id not in out:
                out[job_id] = JobStatus(
                    job_id=job_id,
                    state=SchedulerJobState.LOST,
                    reason="SLURM no longer knows this job (squeue, scontrol and sacct have no record)",
                )
        return out

    def node_states(self, partition: str | None) -> dict[str, str]:
        """Every node of ``partition`` (the default partition when ``None``) and its sinfo state."""
        argv = ["sinfo", "-h", "-N", "-o", sp.SINFO_FORMAT]
        if partition is not None:
            if not sp.SINFO_PARTITION_RE.fullmatch(partition):
                raise SchedulerError(f"not a partition name: {partition!r}")
            argv += ["-p", partition]
        proc = self._run(argv)
        try:
            return sp.parse_sinfo_nodes(proc.stdout, default_only=partition is None)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc

    def cancel(self, job_id: str) -> None:
        if not str(job_id).isdigit():
            raise SchedulerError(f"not a SLURM job id: {job_id!r}")
        proc = self._run(["scancel", str(job_id)], check=False)
        if proc.returncode != 0 and not _already_gone(proc.stderr):
            raise SchedulerError(_tool_message("scancel", proc))

    def find_by_name(self, job_name: str) -> str | None:
        proc = self._run(
            ["squeue", "-h", "--me", "--states=all", f"--name={job_name}", "-o", sp.SQUEUE_FORMAT]
        )
        ids = [r.job_id for r in sp.parse_squeue(proc.stdout).values() if r.name == job_name]
        if not ids and self._accounting is not False:
            proc = self._run(
                ["sacct", "-X", "-n", "-P", f"--name={job_name}", "-o", sp.SACCT_FORMAT], check=False
            )
            if self._note_accounting(proc):
                ids = [r.job_id for r in sp.parse_sacct(proc.stdout).values() if r.name == job_name]
        ids = [i for i in ids if i.isdigit()]
        return max(ids, key=int) if ids else None

    # ------------------------------------------------------------------ helpers

    def _squeue(self, ids: Sequence[str]) -> dict[str, sp.JobRecord]:
        proc = self._run(
            ["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", sp.SQUEUE_FORMAT], check=False
        )
        if proc.returncode != 0:
            # When *every* requested id is unknown squeue fails with "Invalid job id specified".
            if sp.invalid_job_id(proc.stderr):
                return {}
            raise SchedulerError(_tool_message("squeue", proc))
        try:
            return sp.parse_squeue(proc.stdout)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc

    def _scontrol(self, job_id: str) -> sp.JobRecord | None:
        proc = self._run(["scontrol", "-o", "show", "job", job_id], check=False)
        if proc.returncode != 0:
            if sp.invalid_job_id(proc.stderr):
                return None
            raise SchedulerError(_tool_message("scontrol", proc))
        return sp.parse_scontrol_jobs(proc.stdout).get(job_id)

    def _sacct(self, ids: Sequence[str]) -> dict[str, sp.JobRecord]:
        if self._accounting is False:
            return {}
        proc = self._run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", sp.SACCT_FORMAT], check=False)
        if not self._note_accounting(proc):
            return {}
        try:
            return sp.parse_sacct(proc.stdout)
        except ValueError as exc:
            raise SchedulerError(str(exc)) from exc

    def _note_accounting(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Remember that accounting is disabled (sacct says so once; never ask again)."""
        if sp.accounting_disabled(proc.stdout + proc.stderr):
            if self._accounting is None:
                log.info("SLURM accounting storage is disabled: relying on squeue/scontrol (MinJobAge)")
            self._accounting = False
            return False
        if proc.returncode != 0:
            raise SchedulerError(_tool_message("sacct", proc))
        self._accounting = True
        return True


def absolute_paths(spec: JobSpec) -> JobSpec:
    """``spec`` with its directories and token file made absolute against the controller's cwd.

    A job runs in ``--chdir=<workdir>`` and sbatch resolves ``--output`` against that directory, so
    a relative data dir (e.g. ``var``) would otherwise point somewhere else inside the job.
    """
    env = dict(spec.env)
    token_file = env.get(envvars.TOKEN_FILE)
    if token_file is not None:
        env[envvars.TOKEN_FILE] = str(Path(token_file).absolute())
    return dataclasses.replace(
        spec,
        workdir=spec.workdir.absolute(),
        stdout=spec.stdout.absolute(),
        stderr=spec.stderr.absolute(),
        env=env,
    )


def _status(rec: sp.JobRecord) -> JobStatus:
    state = rec.state.state
    extra = dict(rec.extra)
    extra["slurm_state"] = rec.state.raw
    if rec.state.cancelled_by is not None:
        extra["cancelled_by"] = rec.state.cancelled_by
    if rec.signal:
        extra["signal"] = str(rec.signal)
    live = not state.finished
    return JobStatus(
        job_id=rec.job_id,
        state=state,
        exit_code=None if live else sp.shell_exit_code(rec.exit_code, rec.signal),
        reason=rec.reason,
        submit_time=rec.submit_time,
        start_time=rec.start_time,
        # A live job's EndTime is its expected end: report it as the deadline, not as an end.
        end_time=None if live else rec.end_time,
        deadline=rec.end_time if state is SchedulerJobState.RUNNING else None,
        extra=extra,
    )


def _tool_message(tool: str, proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return f"{tool} failed (exit {proc.returncode}): {text or 'no output'}"


def _already_gone(stderr: str) -> bool:
    low = stderr.lower()
    return sp.invalid_job_id(low) or "already completing or completed" in low


def _check_private(path: Path) -> None:
    """Refuse a token file others can read: the token must not leak through a shared file system."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SchedulerError(f"token file {path} does not exist") from None
    if mode & 0o077:
        raise SchedulerError(f"token file {path} must be readable by its owner only (mode {mode & 0o777:o})")
