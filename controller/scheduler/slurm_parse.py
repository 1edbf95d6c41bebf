"""Every piece of SLURM CLI output pyrecover reads is parsed here, and only here.

The tests feed this module outputs captured from a real Slurm 22.05 cluster
(``tests/controller/scheduler/fixtures/slurm/``). The backend runs the CLIs with ``TZ=UTC``, so
the ISO timestamps squeue/scontrol/sacct print (in the caller's local time zone, without an
offset) are parsed as UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.states import SchedulerJobState as S

SEP = "|"
SQUEUE_FIELDS = ("%i", "%T", "%r", "%V", "%S", "%e", "%j")
SQUEUE_FORMAT = SEP.join(SQUEUE_FIELDS)
"""``squeue -o``: id, state, reason, submit, start, end, name. The name comes last because it is
the only free-text field: a ``|`` inside it cannot shift the other columns."""

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Submit", "Start", "End", "Reason", "NodeList", "JobName")
SACCT_FORMAT = ",".join(SACCT_FIELDS)
"""``sacct -X -n -P -o``: pipe-separated, allocation lines only, the name last for the same reason.
``NodeList`` because a job that ``scontrol`` forgot (``MinJobAge``) is known only here, and a
``NODE_FAIL`` blames its nodes (``controller.reconciler.exclusions``)."""

SINFO_FORMAT = "%N|%T|%P"
"""``sinfo -h -N -o``: one line per node and partition: name, state, partition (``*``: the default)."""
SINFO_PARTITION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$", re.ASCII)

_STATES: dict[str, S] = {
    "PENDING": S.PENDING,
    "CONFIGURING": S.PENDING,  # nodes are being allocated/booted; nothing of ours runs yet
    "REQUEUED": S.PENDING,
    "REQUEUE_HOLD": S.PENDING,
    "REQUEUE_FED": S.PENDING,
    "RESV_DEL_HOLD": S.PENDING,
    "RUNNING": S.RUNNING,
    # COMPLETING: the batch script ended but steps/epilog are still being torn down. The job
    # still holds its nodes; its final state (COMPLETED, FAILED ...) follows, so it is not finished.
    "COMPLETING": S.RUNNING,
    "SUSPENDED": S.RUNNING,
    "STOPPED": S.RUNNING,
    "SIGNALING": S.RUNNING,
    "STAGE_OUT": S.RUNNING,
    "RESIZING": S.RUNNING,
    "COMPLETED": S.COMPLETED,
    "FAILED": S.FAILED,
    "SPECIAL_EXIT": S.FAILED,
    "TIMEOUT": S.TIMEOUT,
    "DEADLINE": S.TIMEOUT,  # ended at its --deadline: a time limit by another name
    "PREEMPTED": S.PREEMPTED,
    "NODE_FAIL": S.NODE_FAIL,
    "BOOT_FAIL": S.BOOT_FAIL,
    "OUT_OF_MEMORY": S.OUT_OF_MEMORY,
    "CANCELLED": S.CANCELLED,
    "REVOKED": S.CANCELLED,  # federation: a sibling cluster ran the job instead
}
_ABBREVIATIONS = {
    "PD": "PENDING", "CF": "CONFIGURING", "R": "RUNNING", "CG": "COMPLETING", "S": "SUSPENDED",
    "ST": "STOPPED", "SI": "SIGNALING", "SO": "STAGE_OUT", "RS": "RESIZING", "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD", "RF": "REQUEUE_FED", "RD": "RESV_DEL_HOLD", "CD": "COMPLETED", "F": "FAILED",
    "SE": "SPECIAL_EXIT", "TO": "TIMEOUT", "DL": "DEADLINE", "PR": "PREEMPTED", "NF": "NODE_FAIL",
    "BF": "BOOT_FAIL", "OOM": "OUT_OF_MEMORY", "CA": "CANCELLED", "RV": "REVOKED",
}  # fmt: skip
_NO_VALUE = frozenset({"", "N/A", "NONE", "UNKNOWN", "(NULL)", "0"})
_CANCELLED_BY_RE = re.compile(r"^CANCELLED\s+by\s+(\S+)$", re.IGNORECASE)
# slurmstepd writes this into the job's stderr when it kills a job:
#   slurmstepd-vm: error: *** JOB 4 ON vm CANCELLED AT 2026-11-28T20:52:48 DUE TO TIME LIMIT ***
_STEPD_CANCEL_RE = re.compile(
    r"\*\*\* (?:JOB|STEP) [0-9.]+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))?(?: \*\*\*|$)"
)
_STEPD_CAUSES = {"TIME LIMIT": S.TIMEOUT, "PREEMPTION": S.PREEMPTED, "NODE FAILURE": S.NODE_FAIL}
# A job selected for preemption (PreemptMode=CANCEL) gets SIGTERM and GraceTime to leave. If it
# exits within the grace, Slurm 22.05 records what its exit status says (COMPLETED after a clean
# save-and-stop, FAILED otherwise) and only sets PreemptTime; PREEMPTED is kept for a job it had to
# kill at the end of the grace. Either way the cluster ended the job: these map to PREEMPTED.
_ENDED_WITHIN_GRACE = frozenset({S.COMPLETED, S.FAILED})
_SCONTROL_KEY_RE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")
_JOB_ID_RE = re.compile(r"^\d+$")


@dataclass(frozen=True, kw_only=True)
class SlurmState:
    """A normalised state plus what the raw text said."""

    state: S
    raw: str
    cancelled_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """One job as squeue, scontrol or sacct described it (times in Unix seconds)."""

    job_id: str
    state: SlurmState
    name: str | None = None
    reason: str | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    """For a live job, the *expected* end (start + time limit): the job's deadline."""
    exit_code: int | None = None
    signal: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def parse_state(raw: str) -> SlurmState:
    """``"RUNNING"``, ``"CD"``, ``"CANCELLED by 0"``, ``"CANCELLED+"`` ... → a ``SlurmState``.

    A state this table does not know is treated as still running (``RUNNING``): ending an attempt
    on a word we do not understand would be worse than waiting until the job vanishes (``LOST``).
    """
    text = raw.strip()
    cancelled_by = None
    if m := _CANCELLED_BY_RE.match(text):
        cancelled_by = m.group(1)
        text = "CANCELLED"
    text = text.rstrip("+").upper()  # sacct truncates with '+'
    text = _ABBREVIATIONS.get(text, text)
    return SlurmState(state=_STATES.get(text, S.RUNNING), raw=raw.strip(), cancelled_by=cancelled_by)


def parse_time(text: str) -> float | None:
    """An ISO timestamp without offset, printed under ``TZ=UTC`` → Unix seconds; N/A, Unknown → None."""
    value = text.strip()
    if value.upper() in _NO_VALUE:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``"3:0"`` → (3, 0): SLURM's ``<exit status>:<signal>``."""
    code, _, sig = text.strip().partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def shell_exit_code(code: int | None, signal: int | None) -> int | None:
    """One number, as a shell reports it: the exit status, or 128 + signal when a signal killed it."""
    if signal:
        return 128 + signal
    return code


def normalize_reason(text: str | None) -> str | None:
    """A SLURM reason, or None for SLURM's "None" / "N/A" / empty."""
    if text is None:
        return None
    value = text.strip()
    return None if value.upper() in _NO_VALUE else value


def parse_sbatch_parsable(stdout: str) -> str:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``; returns the id."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not _JOB_ID_RE.fullmatch(job_id):
        raise ValueError(f"sbatch --parsable printed no job id: {stdout.strip()!r}")
    return job_id


def parse_squeue(text: str) -> dict[str, JobRecord]:
    """Rows of ``squeue -h --states=all -o SQUEUE_FORMAT`` keyed by job id."""
    out: dict[str, JobRecord] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(SEP, len(SQUEUE_FIELDS) - 1)
        if len(parts) != len(SQUEUE_FIELDS):
            raise ValueError(f"unexpected squeue line: {line!r}")
        job_id, state, reason, submit, start, end, name = parts
        out[job_id.strip()] = JobRecord(
            job_id=job_id.strip(),
            state=parse_state(state),
            name=name,
            reason=normalize_reason(reason),
            submit_time=parse_time(submit),
            start_time=parse_time(start),
            end_time=parse_time(end),
        )
    return out


def parse_scontrol_fields(line: str) -> dict[str, str]:
    """One job of ``scontrol -o show job`` → its ``Key=Value`` pairs (values may contain spaces)."""
    keys = list(_SCONTROL_KEY_RE.finditer(line))
    fields: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        fields[m.group(1)] = line[m.end() : end].strip()
    return fields


def parse_scontrol_jobs(text: str) -> dict[str, JobRecord]:
    """``scontrol -o show job [id]`` (one job per line) keyed by job id.

    A job that ended within its preemption grace (``PreemptTime`` set, state COMPLETED or FAILED)
    is ``PREEMPTED``; ``state.raw`` keeps what Slurm said and ``exit_code`` the job's exit status.
    """
    out: dict[str, JobRecord] = {}
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        f = parse_scontrol_fields(line)
        code, sig = parse_exit_code(f.get("ExitCode", ""))
        job_id = f["JobId"]
        state = parse_state(f.get("JobState", ""))
        extra: dict[str, str] = {k: f[k] for k in ("NodeList", "RunTime", "TimeLimit", "Restarts") if k in f}
        if parse_time(f.get("PreemptTime", "")) is not None:  # "None" unless selected for preemption
            extra["PreemptTime"] = f["PreemptTime"]
            if state.state in _ENDED_WITHIN_GRACE:
                state = SlurmState(state=S.PREEMPTED, raw=state.raw)
        out[job_id] = JobRecord(
            job_id=job_id,
            state=state,
            name=f.get("JobName"),
            reason=normalize_reason(f.get("Reason", "")),
            submit_time=parse_time(f.get("SubmitTime", "")),
            start_time=parse_time(f.get("StartTime", "")),
            end_time=parse_time(f.get("EndTime", "")),
            exit_code=code,
            signal=sig,
            extra=extra,
        )
    return out


def parse_sinfo_nodes(text: str, *, default_only: bool = False) -> dict[str, str]:
    """``sinfo -h -N -o SINFO_FORMAT`` as node name -> state; ``default_only``: the nodes of the
    partition marked ``*`` (sbatch's default) only."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(SEP)
        if len(parts) != 3:
            raise ValueError(f"unexpected sinfo line: {line!r}")
        node, state, partition = parts
        if default_only and not partition.endswith("*"):
            continue
        out[node] = state
    return out


def parse_sacct(text: str) -> dict[str, JobRecord]:
    """``sacct -X -n -P -o SACCT_FORMAT`` keyed by job id (the newest record wins on repeats)."""
    out: dict[str, JobRecord] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(SEP, len(SACCT_FIELDS) - 1)
        if len(parts) != len(SACCT_FIELDS):
            raise ValueError(f"unexpected sacct line: {line!r}")
        job_id, state, exit_code, submit, start, end, reason, nodes, name = parts
        code, sig = parse_exit_code(exit_code)
        nodes = nodes.strip()
        out[job_id] = JobRecord(
            job_id=job_id,
            state=parse_state(state),
            name=name,
            reason=normalize_reason(reason),
            submit_time=parse_time(submit),
            start_time=parse_time(start),
            end_time=parse_time(end),
            exit_code=code,
            signal=sig,
            # "None assigned": a job that never started has no nodes to blame.
            extra={"NodeList": nodes} if nodes and not nodes.lower().startswith("none") else {},
        )
    return out


def accounting_disabled(output: str) -> bool:
    """sacct without slurmdbd: "Slurm accounting storage is disabled"."""
    return "accounting storage is disabled" in output.lower()


def invalid_job_id(output: str) -> bool:
    """squeue/scontrol/scancel for an id the controller no longer knows."""
    return "invalid job id" in output.lower()


def cancel_cause_from_log(text: str) -> S | None:
    """What a slurmstepd "*** JOB n ON node CANCELLED AT t [DUE TO ...] ***" line says, if present.

    ``TIMEOUT``, ``PREEMPTED`` or ``NODE_FAIL`` for "DUE TO TIME LIMIT / PREEMPTION / NODE
    FAILURE"; ``CANCELLED`` for a plain cancellation (scancel); ``None`` when no such line exists.
    """
    cause: S | None = None
    for m in _STEPD_CANCEL_RE.finditer(text):
        why = m.group(1)
        cause = _STEPD_CAUSES.get(why.strip(), S.CANCELLED) if why else S.CANCELLED
    return cause
