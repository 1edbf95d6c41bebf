"""Environment variables every scheduler backend sets for the worker.

See docs/architecture.md, "Environment variables".

Tokens travel only through a 0600 file named by ``PYRECOVER_TOKEN_FILE``: never on a command line,
never in the job's environment listing (``scontrol show job``).
"""

from __future__ import annotations

CONTROLLER_URL = "PYRECOVER_CONTROLLER_URL"
RUN_ID = "PYRECOVER_RUN_ID"
ATTEMPT = "PYRECOVER_ATTEMPT"
TOKEN_FILE = "PYRECOVER_TOKEN_FILE"
DEADLINE = "PYRECOVER_DEADLINE"  # Unix seconds, float allowed
SPOOL_DIR = "PYRECOVER_SPOOL_DIR"  # where the reporter spools undelivered events
SIGNAL_LEAD = "PYRECOVER_SIGNAL_LEAD"
"""Seconds before the time limit at which the backend sends its backstop SIGUSR1 (0 or unset: the
worker does not know the lead, and a USR1/USR2 then stops it at once)."""

TEST_PREFIX = "PYRECOVER_TEST_"
"""Fault-injection hooks (``worker.testhooks``). The API refuses every ``PYRECOVER_*`` name in a run's
``resources.env`` and the backends never pass the controller's own ``PYRECOVER_*`` variables on, so
only a test that starts workers itself can set them."""

PYTHON_UNBUFFERED = "PYTHONUNBUFFERED"  # set to 1: a rank's log lines reach its file as they happen

CONTROLLER_SET = frozenset({CONTROLLER_URL, RUN_ID, ATTEMPT, TOKEN_FILE, SIGNAL_LEAD, PYTHON_UNBUFFERED})
"""What the controller itself sets in a job's environment (``controller/reconciler/jobspec.py``): the
only variables in a job past the run-field rules (``shared/env_policy.py`` denies them to runs)."""

# Deadline fallbacks, in the order docs/architecture.md gives after PYRECOVER_DEADLINE.
SLURM_JOB_END_TIME = "SLURM_JOB_END_TIME"
SLURM_JOB_ID = "SLURM_JOB_ID"
