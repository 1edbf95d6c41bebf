"""Run and attempt states, their transition tables and every set of them; why an attempt ended.

This is the one place a set of run or attempt states is declared (a test refuses one elsewhere).
``controller.state_machine`` applies the tables; see docs/architecture.md, "States".
"""

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
"""At most one per run (a partial unique index): the attempt that runs, or is about to."""
ACTIVE_ATTEMPT_STATES = frozenset(AttemptState) - {AttemptState.ENDED}
"""Not ended yet: the live ones plus STOPPING (a worker saving its final checkpoint)."""
SCHEDULER_OWNED_ATTEMPT_STATES = ACTIVE_ATTEMPT_STATES - {AttemptState.SUBMITTING}
"""Attempts with a job the scheduler knows about: polled each pass, cancelled with the run."""
WAITING_RUN_STATES = frozenset({RunState.PENDING, RunState.QUEUED})
"""Runs that wait for their next attempt to be submitted (when no attempt is active)."""


_R = RunState
RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # Waiting for the first submission; may be cancelled or fail on a refused submission.
    _R.PENDING: frozenset({_R.QUEUED, _R.FAILED, _R.CANCELLED}),
    # An attempt is queued (or due after a backoff); a short attempt may end before we saw it run.
    _R.QUEUED: frozenset({_R.RUNNING, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
    # Back to QUEUED between attempts (walltime stop, preemption, failure within budget).
    _R.RUNNING: frozenset({_R.QUEUED, _R.COMPLETED, _R.FAILED, _R.CANCELLED}),
    # ``extend``: more steps for a finished run; it continues from its final checkpoint.
    _R.COMPLETED: frozenset({_R.PENDING}),
    # ``resume``: restart from the latest committed checkpoint.
    _R.FAILED: frozenset({_R.PENDING}),
    _R.CANCELLED: frozenset({_R.PENDING}),
}
"""Which run state may follow which; ``controller.state_machine.transition_run`` enforces it."""

_A = AttemptState
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    # The recorded intent: submitted (PENDING), or ended when the scheduler refused / it was cancelled.
    _A.SUBMITTING: frozenset({_A.PENDING, _A.ENDED}),
    # PENDING → STOPPING: a worker may announce its stop before the reconciler's poll saw it run.
    _A.PENDING: frozenset({_A.RUNNING, _A.STOPPING, _A.ENDED}),
    _A.RUNNING: frozenset({_A.STOPPING, _A.ENDED}),
    _A.STOPPING: frozenset({_A.ENDED}),
    _A.ENDED: frozenset(),
}
"""Which attempt state may follow which; ``controller.state_machine.transition_attempt`` enforces it."""
RESUMABLE_RUN_STATES = frozenset({RunState.FAILED, RunState.CANCELLED})
"""Ended runs a user may resume. A COMPLETED run goes on only when it is given more steps (extend)."""


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
    HUNG = "hung"
    """Stopped making progress (the worker's watchdog, or no report for the heartbeat timeout)."""
    DIVERGED = "diverged"
    """The loss or gradients went non-finite or spiked; the worker stopped without committing them."""
    CONFIG_ERROR = "config_error"
    """The worker rejected the run's configuration (exit 3): retrying cannot help."""
    INTEGRITY_ERROR = "integrity_error"
    """No loadable checkpoint where one was required (exit 4): every committed one failed verification."""
    RESTART_REFUSED = "restart_refused"
    """The worker refused to start from step 0 over the run's past (exit 7)."""


CLEAN_END_REASONS = frozenset(
    {EndReason.FINISHED, EndReason.DEADLINE_STOP, EndReason.SIGNAL_STOP, EndReason.CANCELLED}
)
"""Endings after a committed final checkpoint (or a user's cancel): nothing after the last commit
was lost. Every other ending lost the work since the attempt's last commit."""
FATAL_END_REASONS = frozenset({EndReason.CONFIG_ERROR, EndReason.INTEGRITY_ERROR, EndReason.RESTART_REFUSED})
"""Endings that fail the run at once: the same run would end the same way again, whatever is retried,
until a person changes something (the run's fields, its checkpoints, or allows a fresh start)."""


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
