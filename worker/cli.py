"""``pyrecover train`` / ``python -m worker``: parse, validate, train; returns the exit code."""

from __future__ import annotations

import logging
import os
import sys

from shared.exit_codes import ExitCode
from worker.config import ConfigError, build_parser, config_from_args
from worker.seed_flags import apply_seed_flags


def _init_logging() -> None:
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
        stream=sys.stderr,
    )  # a no-op when the host process (a test runner, a notebook) already configured logging
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def main(argv: list[str] | None = None, *, fast_exit: bool = False) -> int:
    """Entry point shared by ``pyrecover train`` and ``python -m worker``; returns the exit code.

    With ``fast_exit`` a training that really ran ends the process through
    :func:`worker.shutdown.exit_now` (CPython's finalization of a torch process takes seconds after
    the final checkpoint, when a SLURM time limit may be close). ``--help``, usage and configuration
    errors always return normally, so a host process (a test's CLI runner) survives them.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed why
        return int(exc.code) if isinstance(exc.code, int) else int(ExitCode.USAGE)
    seed_notes = apply_seed_flags(args)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    _init_logging()
    if os.environ.get("RANK", "0") == "0" and os.environ.get("SLURM_PROCID", "0") == "0":
        for note in seed_notes:  # rank 0's log is enough
            logging.getLogger("pyrecover.worker").info("seed flag %s", note)
    from worker.train import run_training  # torch is imported only when training really starts

    code = run_training(config)
    if fast_exit:
        from worker.shutdown import exit_now

        exit_now(code)
    return code
