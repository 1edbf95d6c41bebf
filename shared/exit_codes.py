"""Worker exit codes (docs/architecture.md, "Exit codes"): 0 is a clean exit, anything else a failure.

The controller never decides from the exit code alone: a clean exit with steps left means the
worker stopped gracefully (deadline, signal, ``--stop-after-steps``) after a committed checkpoint.
The distinct non-zero codes tell the failure classes apart (``END_REASON_OF_EXIT``): a config
error, an integrity error or a refused fresh start fails the run at once; a hang or a divergence is
handled by its own policy.
"""

from __future__ import annotations

from enum import IntEnum

from shared.states import EndReason


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # argparse's own code for bad flags
    CONFIG_ERROR = 3  # flags parsed but rejected (bad combination, missing dataset, shape change on resume)
    CHECKPOINT_ERROR = 4  # no loadable checkpoint where one was required
    HUNG = 5  # the watchdog saw no progress for longer than the phase allows (stacks in the log)
    DIVERGED = 6  # non-finite loss/gradients/weights or a loss spike; the bad state was not committed
    FRESH_START_REFUSED = 7  # the run has a past (quarantine, loss.csv rows) but no checkpoint verifies
    INTERRUPTED = 130  # stopped by a signal before anything could be committed


END_REASON_OF_EXIT: dict[int, EndReason] = {
    # Flags the worker does not accept: the same flags next time, so no retry can help (a worker
    # older than its controller, a hand-edited worker_python); the log has argparse's line.
    ExitCode.USAGE: EndReason.CONFIG_ERROR,
    ExitCode.CONFIG_ERROR: EndReason.CONFIG_ERROR,
    ExitCode.CHECKPOINT_ERROR: EndReason.INTEGRITY_ERROR,
    ExitCode.HUNG: EndReason.HUNG,
    ExitCode.DIVERGED: EndReason.DIVERGED,
    ExitCode.FRESH_START_REFUSED: EndReason.RESTART_REFUSED,
}
"""The end reason a failed job's exit code names (the scheduler's view; the worker's ``hung`` and
``diverged`` events say the same when the ranks' codes were mixed)."""
