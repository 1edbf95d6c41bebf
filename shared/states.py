"""Run and attempt states, and why an attempt ended (DESIGN.md, "Contracts")."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Lifecycle of a run: ``PENDING → QUEUED → RUNNING → (QUEUED …) → COMPLETED | FAILED | CANCELLED``."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATES


TERMINAL_RUN_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})


class AttemptState(StrEnum):
    """Lifecycle of one attempt (one scheduler job).

    ``SUBMITTING`` is the recorded intent: the row exists before the scheduler is called, so a
    controller killed between "submit" and "record" finds the intent and reconciles it by job name
    instead of submitting a duplicate.
    """

    SUBMITTING = "SUBMITTING"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    ENDED = "ENDED"

    @property
    def live(self) -> bool:
        """Counts against "a run never has two live attempts" (guarded by a unique index in the DB).

        ``STOPPING`` is excluded on purpose: once the worker announced its stop, the successor may be
        pre-queued with ``--dependency=afterany`` while the final save is still being written.
        """
        return self in LIVE_ATTEMPT_STATES


LIVE_ATTEMPT_STATES = frozenset({AttemptState.SUBMITTING, AttemptState.PENDING, AttemptState.RUNNING})


class EndReason(StrEnum):
    """Why an attempt ended. The controller decides what comes next from the run's progress."""

    FINISHED = "finished"
    DEADLINE_STOP = "deadline_stop"
    SIGNAL_STOP = "signal_stop"
    TIMEOUT_KILLED = "timeout_killed"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class SchedulerJobState(StrEnum):
    """A scheduler's view of a job, normalised across backends (SLURM names where they exist)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED = "CANCELLED"
    LOST = "LOST"

    @property
    def finished(self) -> bool:
        return self not in (SchedulerJobState.PENDING, SchedulerJobState.RUNNING)
