"""``python -m worker``: the training entry point (same flags as ``pyrecover train``)."""

import sys

from worker.cli import main
from worker.shutdown import exit_now

# exit_now, not sys.exit: CPython's finalization of the torch process takes seconds, after the final
# checkpoint, where a SLURM time limit may already be close (see worker.shutdown).
exit_now(main(sys.argv[1:]))
