"""``python -m worker``: the training entry point (same flags as ``pyrecover train``)."""

import sys

from worker.signals import catch_early_warnings

# First, before the heavy imports: a walltime warning during start-up is recorded, not fatal.
catch_early_warnings()

from worker.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:], fast_exit=True))
