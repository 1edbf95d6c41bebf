"""The ``local`` backend: runs an attempt's worker ranks as processes on this machine.

It behaves like SLURM where the controller can tell the difference:

* ``submit`` starts ``world_size`` ranks at once (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT`` per job), each in a new session and process
  group of its own (signals go to every group: a rank's data-loader children are reached too),
  with stdout and stderr appended to the attempt's log files and ``PYRECOVER_DEADLINE`` = start +
  time limit.
* A supervisor thread enforces the walltime: an optional ``SIGUSR1`` at ``deadline - lead``,
  ``SIGTERM`` at the deadline and ``SIGKILL`` ``kill_wait`` seconds later. A job signalled at its
  deadline ends ``TIMEOUT`` whatever its exit code (as in SLURM); otherwise all ranks 0 →
  ``COMPLETED``, a cancelled job → ``CANCELLED``, any other exit → ``FAILED`` with the code kept.
* Dependencies are not supported (``supports_dependencies = False``): every local job starts at
  once, so the reconciler never pre-queues a successor here; it submits the next attempt after
  the previous one ended, which on one machine costs no queue wait anyway.

Restarts. Every job has a JSON state file under ``state_dir`` (pids, their kernel start times,
start time, deadline, and the result once known), and every rank runs under a tiny ``sh`` shim
that writes the rank's exit code to a file next to it. The ranks live in their own session, so
they survive the controller. A restarted controller **adopts** a job whose state file has no
result: if one of its recorded pids is still alive *with the same kernel start time* (so a
reused pid is never mistaken for ours) it gets a new supervisor that keeps enforcing the same
deadline; once all ranks are gone the result comes from the exit-code files. A job whose
processes vanished without leaving exit-code files (e.g. the machine rebooted, or the shim was
killed by something other than us) is reported ``LOST``. An id without any state file is
``LOST`` as well.

A controller killed *while spawning* has saved the job's intent but not (all) its pids, yet the
ranks it did start run on. Every rank carries ``PYRECOVER_LOCAL_JOB_ID`` in its environment, so
the restarted controller finds them in ``/proc`` (session leaders whose environment names the
job) and adopts them instead of reporting the job ``LOST`` and starting a second worker of the
same run next to them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from shared import envvars
from shared.states import SchedulerJobState

log = logging.getLogger(__name__)

# Runs the rank as a child and records its exit status. A trap (not an ignore: an ignored signal
# would be inherited by the worker) keeps the shell alive while the worker handles the signal;
# the shell defers the trap until its foreground child exits, then writes the code atomically.
_SHIM = (
    'f=$1; shift; trap "true" TERM INT HUP USR1 USR2; "$@"; rc=$?; '
    'echo $rc > "$f.tmp"; mv "$f.tmp" "$f"; exit $rc'
)
_TICK_S = 0.1


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks, or ``None`` if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # exited, waiting to be reaped: no longer running
        return None
    return int(fields[19])


JOB_ID_ENV = "PYRECOVER_LOCAL_JOB_ID"
"""Set on every rank of a local job: how a restarted controller finds ranks it never recorded."""


def _job_session_leaders(job_id: str) -> list[int]:
    """Pids of the session leaders (the ranks' shims) whose environment names ``job_id``.

    Linux ``/proc`` only; elsewhere (or without permission) nothing is found."""
    needle = f"{JOB_ID_ENV}={job_id}".encode()
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if os.getsid(pid) != pid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.append(pid)
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return sorted(found)


def _private_log(path: Path) -> Any:
    """``path`` opened for appending, created 0600 (a log holds the run's output and paths)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@dataclass
class _Job:
    """In-memory view of one job; ``record`` mirrors the state file."""

    record: dict[str, Any]
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)  # empty for an adopted job
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def job_id(self) -> str:
        return str(self.record["job_id"])


class LocalScheduler:
    """Scheduler backend that runs jobs as local process groups (see the module docstring)."""

    name = "local"
    supports_dependencies = False

    def __init__(
        self,
        state_dir: Path,
        *,
        kill_wait_s: float = 30.0,
        signal_lead_s: float | None = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``signal_lead_s``: seconds before the deadline to send SIGUSR1; 0 disables it, ``None``
        takes the run's ``resources.signal_lead_seconds`` (SLURM's ``--signal`` lead)."""
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kill_wait_s = kill_wait_s
        self.signal_lead_s = signal_lead_s
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    # ------------------------------------------------------------------ interface
    def submit(self, spec: JobSpec) -> str:
        if spec.dependency:
            raise SchedulerError("the local scheduler does not support job dependencies")
        job_id = self._new_job_id()
        now = self._clock()
        limit = float(spec.resources.time_limit_seconds)
        lead = spec.resources.signal_lead_seconds if self.signal_lead_s is None else self.signal_lead_s
        world = spec.resources.world_size
        record: dict[str, Any] = {
            "job_id": job_id,
            "job_name": spec.job_name,
            "run_id": spec.run_id,
            "attempt": spec.attempt,
            "submit_time": now,
            "start_time": now,
            "deadline": now + limit,
            "signal_lead_s": float(lead) if 0 < lead < limit else 0.0,
            "kill_wait_s": self.kill_wait_s,
            "world_size": world,
            "pids": [],
            "start_ticks": [],
            "result": None,
        }
        job = _Job(record=record)
        # The intent goes to disk before any process exists, so find_by_name sees the job even if
        # the controller dies while spawning.
        self._save(job)
        spec.stdout.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        spec.stderr.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        port = _free_port()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")}
        try:
            with _private_log(spec.stdout) as out, _private_log(spec.stderr) as err:
                for rank in range(world):
                    # The run's variables never override what the backend sets per rank below.
                    env = {
                        **base_env,
                        **spec.env,
                        **spec.secret_env,
                        "RANK": str(rank),
                        "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": str(world),
                        "LOCAL_WORLD_SIZE": str(world),
                        "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port),
                        envvars.DEADLINE: f"{record['deadline']:.3f}",
                        envvars.SIGNAL_LEAD: f"{record['signal_lead_s']:g}",  # what this backend sends
                        JOB_ID_ENV: job_id,
                    }
                    argv = ["/bin/sh", "-c", _SHIM, "sh", str(self._exit_file(job_id, rank)), *spec.argv]
                    proc = subprocess.Popen(
                        argv,
                        cwd=spec.workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                    job.popens.append(proc)
                    record["pids"].append(proc.pid)
                    record["start_ticks"].append(_proc_start_time(proc.pid))
        except OSError as exc:
            self._signal_group(job, signal.SIGKILL)
            record["result"] = {
                "state": SchedulerJobState.FAILED.value,
                "exit_code": None,
                "reason": str(exc),
            }
            record["end_time"] = self._clock()
            self._save(job)
            raise SchedulerError(f"could not start the worker: {exc}") from exc
        self._save(job)
        self._start_supervisor(job)
        return job_id

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {job_id: self._status(job_id) for job_id in job_ids}

    def cancel(self, job_id: str) -> None:
        job = self._get(job_id)
        if job is None or job.record["result"] is not None:
            return
        job.cancel_event.set()
        with job.lock:
            job.record["cancel_requested"] = True
            self._save_locked(job)
        self._signal_group(job, signal.SIGTERM)

    def find_by_name(self, job_name: str) -> str | None:
        newest: tuple[float, str] | None = None
        for path in self.state_dir.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("job_name") == job_name:
                key = (float(record.get("submit_time", 0.0)), str(record["job_id"]))
                newest = key if newest is None or key > newest else newest
        return newest[1] if newest else None

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop supervising (jobs keep running and are adopted by the next controller), or kill them all."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if kill and job.record["result"] is None:
                job.cancel_event.set()
                self._signal_group(job, signal.SIGKILL)

    # ------------------------------------------------------------------ internals
    def _new_job_id(self) -> str:
        while True:
            job_id = f"local-{os.getpid()}-{next(self._counter)}"
            if not self._state_file(job_id).exists():
                return job_id

    def _state_file(self, job_id: str) -> Path:
        return self.state_dir / f"{job_id}.json"

    def _exit_file(self, job_id: str, rank: int) -> Path:
        return self.state_dir / f"{job_id}.rank{rank}.exit"

    def _save(self, job: _Job) -> None:
        with job.lock:
            self._save_locked(job)

    def _save_locked(self, job: _Job) -> None:
        _write_json(self._state_file(job.job_id), job.record)

    def _get(self, job_id: str) -> _Job | None:
        """The job from memory, or loaded from its state file (adopting it if it still runs)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                return job
            path = self._state_file(job_id)
            if "/" in job_id or not path.exists():
                return None
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            job = _Job(record=record)
            self._jobs[job_id] = job
        if record["result"] is None:
            if len(record["pids"]) < int(record.get("world_size", 1)):
                self._recover_unrecorded_ranks(job)
            if self._alive_pids(job):
                self._start_supervisor(job)
            else:
                self._finish(job, timed_out=bool(record.get("timed_out")), adopted=True)
        return job

    def _status(self, job_id: str) -> JobStatus:
        job = self._get(job_id)
        if job is None:
            return JobStatus(
                job_id=job_id, state=SchedulerJobState.LOST, reason="unknown to the local scheduler"
            )
        with job.lock:
            rec = dict(job.record)
        result = rec["result"] or {"state": SchedulerJobState.RUNNING.value}
        return JobStatus(
            job_id=job_id,
            state=SchedulerJobState(result["state"]),
            exit_code=result.get("exit_code"),
            reason=result.get("reason"),
            submit_time=rec.get("submit_time"),
            start_time=rec.get("start_time"),
            end_time=rec.get("end_time"),
            deadline=rec.get("deadline"),
        )

    def _recover_unrecorded_ranks(self, job: _Job) -> None:
        """The controller died between spawning ranks and recording them: find them by environment."""
        rec = job.record
        found = [pid for pid in _job_session_leaders(rec["job_id"]) if pid not in rec["pids"]]
        for pid in found:
            rec["pids"].append(pid)
            rec["start_ticks"].append(_proc_start_time(pid))
            log.warning("local job %s: adopted rank process %d, never recorded", rec["job_id"], pid)
        if found:
            self._save(job)

    def _alive_pids(self, job: _Job) -> list[int]:
        """Recorded pids still running as the same processes (pid + kernel start time match)."""
        if job.popens:
            return [p.pid for p in job.popens if p.poll() is None]
        rec = job.record
        return [
            pid
            for pid, ticks in zip(rec["pids"], rec["start_ticks"], strict=False)
            if ticks is not None and _proc_start_time(pid) == ticks
        ]

    def _signal_group(self, job: _Job, sig: signal.Signals) -> None:
        # Each rank leads its own session (setpgid cannot join a group across sessions), so the
        # job's "group" is the set of those process groups. Only live, verified pids are signalled:
        # the group id of a vanished rank may have been reused.
        for pid in self._alive_pids(job):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)

    def _start_supervisor(self, job: _Job) -> None:
        with self._lock:
            self._jobs[job.job_id] = job
        t = threading.Thread(target=self._supervise, args=(job,), name=f"local-{job.job_id}", daemon=True)
        t.start()

    def _supervise(self, job: _Job) -> None:
        rec = job.record
        deadline = float(rec["deadline"])
        lead = float(rec.get("signal_lead_s") or 0.0)
        kill_wait = float(rec.get("kill_wait_s", self.kill_wait_s))
        warned = bool(rec.get("warned"))
        timed_out = bool(rec.get("timed_out"))
        kill_at: float | None = None
        if timed_out or rec.get("cancel_requested"):
            kill_at = self._clock() + kill_wait
        while self._alive_pids(job):
            now = self._clock()
            if job.cancel_event.is_set() and kill_at is None:
                kill_at = now + kill_wait
            if lead and not warned and now >= deadline - lead:
                warned = True
                self._mark(job, warned=True)
                self._signal_group(job, signal.SIGUSR1)
            if not timed_out and not job.cancel_event.is_set() and now >= deadline:
                timed_out = True
                self._mark(job, timed_out=True)
                self._signal_group(job, signal.SIGTERM)
                kill_at = now + kill_wait
            if kill_at is not None and now >= kill_at:
                self._mark(job, killed=True)
                self._signal_group(job, signal.SIGKILL)
                kill_at = now + kill_wait  # re-send if something survives, never busy-loop
            time.sleep(_TICK_S)
        self._finish(job, timed_out=timed_out, adopted=not job.popens)

    def _mark(self, job: _Job, **flags: bool) -> None:
        with job.lock:
            job.record.update(flags)
            self._save_locked(job)

    def _finish(self, job: _Job, *, timed_out: bool, adopted: bool) -> None:
        rec = job.record
        codes: list[int | None] = []
        for rank, proc in enumerate(job.popens or [None] * int(rec["world_size"])):
            code = proc.wait() if proc is not None else None
            try:
                code = int(self._exit_file(job.job_id, rank).read_text().strip())
            except (OSError, ValueError):
                # The shim itself was killed (SIGKILL) or never wrote: fall back to what we saw.
                code = (128 - code if code < 0 else code) if code is not None else None
            codes.append(code)
        nonzero = [c for c in codes if c not in (0, None)]
        exit_code = nonzero[0] if nonzero else (0 if None not in codes else None)
        if rec.get("cancel_requested"):
            state, reason = SchedulerJobState.CANCELLED, "cancelled"
        elif timed_out:
            state, reason = SchedulerJobState.TIMEOUT, "killed at the time limit"
        elif None in codes and not rec.get("killed"):
            state, reason = SchedulerJobState.LOST, "the processes vanished without an exit status"
        elif exit_code == 0:
            state, reason = SchedulerJobState.COMPLETED, None
        else:
            state, reason = SchedulerJobState.FAILED, f"exit code {exit_code}"
        with job.lock:
            if rec["result"] is None:
                rec["result"] = {
                    "state": state.value,
                    "exit_code": exit_code,
                    "reason": reason,
                    "adopted": adopted,
                }
                rec["end_time"] = self._clock()
                self._save_locked(job)
