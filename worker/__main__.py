"""``python -m worker``: the training entry point (same flags as ``pyrecover train``)."""

import sys

from worker.cli import main

sys.exit(main(sys.argv[1:], fast_exit=True))
