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

# Deadline fallbacks, in the order docs/architecture.md gives after PYRECOVER_DEADLINE.
SLURM_JOB_END_TIME = "SLURM_JOB_END_TIME"
SLURM_JOB_ID = "SLURM_JOB_ID"
