"""What a worker reports and what the controller answers: the one declaration of each vocabulary.

Event types, stop reasons and worker actions are declared here once; every other set (the events
the reporter never drops, the events that wake the reconciler, the tags of the report union) is
derived from these enums, so adding an event means adding it here and to the report union in
``shared.schemas.reports`` (a test checks that both agree). See docs/architecture.md, "Contracts".
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """The ``type`` of a worker event (``POST /api/v1/runs/{id}/reports``)."""

    STARTED = "started"
    """Training began (fresh or resumed); carries start-up and checkpoint-load times."""
    PROGRESS = "progress"
    """A metric point (loss, learning rate, throughput) every ``logging_frequency`` steps."""
    CHECKPOINT_COMMITTED = "checkpoint_committed"
    """A checkpoint's manifest was written and the directory renamed into place."""
    CHECKPOINTS_DELETED = "checkpoints_deleted"
    """Retention deleted these committed checkpoints (their steps) from disk after a commit."""
    STOPPING = "stopping"
    """The worker decided to stop before ``training_steps`` (deadline, signal, request)."""
    FINISHED = "finished"
    """Every step is trained and the final checkpoint committed."""
    FAILED = "failed"
    """The worker gave up; carries the error."""
    WARNING = "warning"
    """Something the user should see on the run (a corrupt checkpoint skipped, ...)."""
    HUNG = "hung"
    """A rank's watchdog saw no progress for longer than its phase allows; names the suspect ranks.
    Followed by ``failed``; the ranks exit with ``ExitCode.HUNG``."""
    DIVERGED = "diverged"
    """The loss or gradients went non-finite (or the loss spiked); nothing bad was committed. Carries
    the data window since the last commit. Followed by ``failed``; exit ``ExitCode.DIVERGED``."""


DROPPABLE_EVENT_TYPES = frozenset({EventType.PROGRESS})
"""What the reporter may drop when its queue overflows: a metric point is replaced by the next one."""
NEVER_DROPPED_EVENT_TYPES = frozenset(EventType) - DROPPABLE_EVENT_TYPES
"""Lifecycle, checkpoint and warning events: the controller's decisions depend on each of them."""
ENDING_EVENT_TYPES = frozenset({EventType.STOPPING, EventType.FINISHED, EventType.FAILED})
"""The events that say how an attempt ends: the reconciler looks at once after one arrives, and reads
them to tell the attempt's end reason (``controller.reconciler.store.reported``)."""


class StopReason(StrEnum):
    """Why a worker stopped before its last step (the ``reason`` of a ``stopping`` event)."""

    DEADLINE = "deadline"
    """The time-aware stop: the time left no longer covered another step and the final save."""
    SIGNAL = "signal"
    """SIGUSR1/USR2/TERM from the scheduler (walltime backstop, preemption, scancel)."""
    STOP_AFTER_STEPS = "stop_after_steps"
    """``--stop-after-steps`` was reached."""
    CONTROLLER_REQUEST = "controller_request"
    """A graceful stop asked for from the API or the dashboard."""


class WorkerAction(StrEnum):
    """What the controller asks of a worker in a report reply (and what a user may request)."""

    NONE = "none"
    CHECKPOINT = "checkpoint"
    """Save a checkpoint at the next step boundary, then go on."""
    STOP = "stop"
    """Save a final checkpoint at the next step boundary and exit 0."""


REQUESTABLE_ACTIONS = frozenset(WorkerAction) - {WorkerAction.NONE}
"""The actions a user may ask for (``POST /api/v1/runs/{id}/actions``)."""


class HangPhase(StrEnum):
    """What a rank was doing when its watchdog saw no progress (the ``phase`` of a ``hung`` event)."""

    STARTUP = "startup"
    """Building the components (data, tokenizer, model), or between the load and the first step."""
    LOAD = "load"
    """Choosing, verifying and loading the checkpoint to resume from."""
    STEP = "step"
    """A training step: the data read, forward/backward, the update and the step-boundary agreement."""
    SAVE = "save"
    """Writing or committing a checkpoint (including waiting for a background save)."""


class DivergenceReason(StrEnum):
    """Why a worker declared its run diverged (the ``reason`` of a ``diverged`` event)."""

    NON_FINITE = "non_finite"
    """``max_skipped_steps`` updates in a row had a non-finite loss or gradient norm."""
    LOSS_SPIKE = "loss_spike"
    """The loss exceeded ``loss_spike_factor`` times its running median."""
    NON_FINITE_STATE = "non_finite_state"
    """The weights or optimizer state held NaN/inf at a save: the checkpoint was not committed."""
