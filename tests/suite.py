"""``make test``'s runner: the suite in two phases, one verdict.

1. everything that needs the machine to itself or changes shared state (CPU-bound training,
   timing-sensitive tests, tests that restart or preempt the SLURM cluster), one test at a time;
2. the tests marked ``slurm_wait`` — they mostly wait on SLURM time limits and touch no node
   state another test relies on — several at once (pytest-xdist, ``PYRECOVER_SLURM_WORKERS``,
   default 3, one test module per worker). The SLURM end-to-end modules plan their runs from one
   calibration of the machine, measured by the first of them and shared through a file
   (``PYRECOVER_SUITE_CALIBRATION``, set here unless the caller set it).

Arguments are passed to both phases (``make test PYTEST_ARGS=tests/worker``). A phase that
collects nothing is fine; both collecting nothing fails (pytest's exit 5: an empty run proves
nothing). The last line sums both phases as ``suite: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

NO_TESTS = 5


def _phase(args: list[str], junit: Path) -> tuple[int, dict[str, int]]:
    rc = subprocess.call([sys.executable, "-m", "pytest", *args, f"--junitxml={junit}"])
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    return rc, counts


def split_marker(argv: list[str]) -> tuple[str | None, list[str]]:
    """The caller's ``-m EXPR`` (pytest keeps only the last one given) and the other arguments."""
    marker, rest, args = None, [], iter(argv)
    for arg in args:
        if arg == "-m":
            marker = next(args, None)
        elif arg.startswith("-m") and not arg.startswith("--"):
            marker = arg[2:]
        else:
            rest.append(arg)
    return marker, rest


def both(extra: str, marker: str | None) -> str:
    return extra if marker is None else f"({marker}) and {extra}"


def main(argv: list[str], run_phase: Callable[[list[str], Path], tuple[int, dict[str, int]]] = _phase) -> int:
    workers = os.environ.get("PYRECOVER_SLURM_WORKERS", "3")
    marker, rest = split_marker(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PYRECOVER_SUITE_CALIBRATION", str(Path(tmp) / "calibration.json"))
        print("==> [suite] phase 1: one test at a time", flush=True)
        rc1, c1 = run_phase(["-m", both("not slurm_wait", marker), *rest], Path(tmp) / "serial.xml")
        print(f"==> [suite] phase 2: tests waiting on SLURM, {workers} at a time", flush=True)
        parallel = ["-m", both("slurm_wait", marker), "-n", workers, "--dist", "loadfile", *rest]
        rc2, c2 = run_phase(parallel, Path(tmp) / "parallel.xml")
    total = {k: c1[k] + c2[k] for k in c1}
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    print(f"suite: {passed} passed, {failed} failed, {total['skipped']} skipped", flush=True)
    codes = [rc for rc in (rc1, rc2) if rc != NO_TESTS]
    if not codes:
        print("pytest collected no tests in either phase: failing", file=sys.stderr)
        return 1
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
