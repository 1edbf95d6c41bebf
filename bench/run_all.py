"""Run every benchmark in bench/ one after another and print where each wrote its results.

    python bench/run_all.py [--only data deadline ...] [--skip resubmit_gap]

Each benchmark measures its own baseline in the same run and writes bench/results/<name>.json;
this script only sequences them (never in parallel: they would measure each other) and records
the machine's load average before each one, because numbers taken on a busy machine mislead.
``resubmit_gap`` needs the local SLURM cluster (deploy/slurm-local/up.sh) and is skipped, with a
note, when ``sbatch`` is not on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Order: cheap and self-contained first; the SLURM one last.
BENCHES = [
    "deadline",
    "data",
    "token_store",
    "checkpoint",
    "train_step",
    "memory_plan",
    "fsdp",
    "api_load",
    "dashboard",
    "resubmit_gap",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run just these")
    parser.add_argument("--skip", nargs="+", choices=BENCHES, default=[], help="leave these out")
    args = parser.parse_args()
    chosen = [b for b in (args.only or BENCHES) if b not in args.skip]
    failed: list[str] = []
    for name in chosen:
        if name == "resubmit_gap" and shutil.which("sbatch") is None:
            print(f"--- {name}: skipped (no sbatch on PATH; start deploy/slurm-local/up.sh first)")
            continue
        load = os.getloadavg()[0]
        print(f"--- {name} (load average {load:.2f} on {os.cpu_count()} CPUs)", flush=True)
        started = time.monotonic()
        rc = subprocess.call([sys.executable, str(BENCH_DIR / f"{name}.py")], cwd=BENCH_DIR.parent)
        print(f"--- {name}: exit {rc} after {time.monotonic() - started:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results in {BENCH_DIR / 'results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
