"""Shared pieces of the fault-injection suite: trial counts, the seeded RNG, results, and drivers.

* ``trials(minimum, share)``: how many trials a test runs. ``PYRECOVER_CHAOS_TRIALS`` (default 30,
  the issue's minimum for worker kills; ``make chaos`` sets 100) scales every test; a test never
  runs fewer than its own minimum.
* ``chaos_rng(name)``: a ``random.Random`` seeded from ``PYRECOVER_CHAOS_SEED`` (random if unset);
  the seed is printed and recorded, so a failing run can be replayed exactly.
* ``record(...)``: one line of figures per test (fault, trials, survived, data lost) appended to
  ``PYRECOVER_CHAOS_RESULTS`` when set; docs/fault-results.md is written from those lines.
* ``Zygote``: starts worker processes from a pre-loaded launcher (see ``zygote.py``).
* ``RunDirWatch``: what a worker is doing right now, seen from outside (log lines, temporaries).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.paths import MANIFEST_NAME, TMP_PREFIX, parse_step

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_TRIALS = 30


def trials(minimum: int, share: float = 1.0) -> int:
    """``max(minimum, round(PYRECOVER_CHAOS_TRIALS * share))``."""
    raw = os.environ.get("PYRECOVER_CHAOS_TRIALS", "").strip()
    total = int(raw) if raw else DEFAULT_TRIALS
    if total <= 0:
        raise ValueError(f"PYRECOVER_CHAOS_TRIALS must be a positive integer, got {raw!r}")
    return max(minimum, round(total * share))


def chaos_rng(name: str) -> random.Random:
    raw = os.environ.get("PYRECOVER_CHAOS_SEED", "").strip()
    seed = int(raw) if raw else random.SystemRandom().randrange(1, 2**31)
    print(f"[chaos] {name}: seed {seed} (replay with PYRECOVER_CHAOS_SEED={seed})", flush=True)
    rng = random.Random(f"{seed}:{name}")
    rng.seed_value = seed  # type: ignore[attr-defined]
    return rng


def record(fault: str, *, path: str, trials: int, survived: int, data_lost: str, **extra: Any) -> None:
    """Print the figures of one fault test and append them to $PYRECOVER_CHAOS_RESULTS (JSON lines)."""
    line = {
        "fault": fault,
        "path": path,
        "trials": trials,
        "survived": survived,
        "data_lost": data_lost,
        **extra,
    }
    print(f"[chaos] result: {json.dumps(line)}", flush=True)
    out = os.environ.get("PYRECOVER_CHAOS_RESULTS")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


class Deadline:
    """A hard time bound for a test (pytest-timeout is not installed): ``check()`` raises past it."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, doing: str = "") -> None:
        if time.monotonic() > self.end:
            raise AssertionError(
                f"{self.what}: exceeded its {self.seconds:.0f} s bound" + (f" while {doing}" if doing else "")
            )

    def wait_for(
        self, cond: Callable[[], Any], doing: str, every: float = 0.05, limit: float | None = None
    ) -> Any:
        end = time.monotonic() + limit if limit is not None else self.end
        while True:
            value = cond()
            if value:
                return value
            self.check(doing)
            if time.monotonic() > end:
                raise AssertionError(f"{self.what}: timed out after {limit:.0f} s {doing}")
            time.sleep(every)


def worker_env(**extra: str) -> dict[str, str]:
    """A clean worker environment: no PYRECOVER_*/SLURM_* leaking in, one intra-op thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRECOVER_", "SLURM_"))}
    # One thread per process: on 2 shared cores OpenMP's spinning threads make a step 10x slower.
    env |= {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env | extra


class Zygote:
    """Client of ``zygote.py``: ``spawn`` a worker, ``kill`` it (SIGKILL), ``wait`` for its exit code."""

    def __init__(self) -> None:
        env = worker_env(PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(REPO),
        )
        self._pids: queue.Queue[int] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(180):
            self.close()
            raise AssertionError("the worker launcher did not finish its imports within 180 s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            msg = json.loads(raw)
            if "ready" in msg:
                self._ready.set()
            elif "pid" in msg:
                self._pids.put(int(msg["pid"]))
            elif "exit" in msg:
                with self._cond:
                    self._exits[int(msg["exit"])] = int(msg["code"])
                    self._cond.notify_all()

    def spawn(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> int:
        assert self.proc.stdin is not None
        request = {"argv": argv, "env": env, "cwd": str(cwd), "log": str(log)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return self._pids.get(timeout=30)

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def kill(self, pid: int) -> bool:
        """SIGKILL ``pid`` if it still runs; True when the signal reached a live worker."""
        with self._cond:
            if pid in self._exits:
                return False
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
        return True

    def wait(self, pid: int, timeout: float) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._exits, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"worker {pid} did not exit within {timeout:.0f} s")
            return self._exits[pid]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


STEP_LINE = re.compile(r"\] step (\d+)/(\d+) \|")
COMMIT_LINE = re.compile(r"checkpoint step (\d+) committed \(([^)]*)\): .* in ([0-9.]+)s")
FALLBACK_MARKERS = ("is corrupt", "falling back", "none verifies", "has no valid manifest")


class LogTail:
    """New lines of a growing log file, read incrementally (the writer may be killed mid-line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                fh.seek(self.offset)
                data = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        data = self.partial + data
        *new, self.partial = data.split("\n")
        self.lines.extend(new)
        return new

    def caught_up(self, step: int) -> bool:
        """Read what is new; True once the log shows a training step >= ``step``."""
        self.poll()
        return self.last_step() >= step

    def last_step(self) -> int:
        for line in reversed(self.lines):
            m = STEP_LINE.search(line)
            if m:
                return int(m.group(1))
        return -1


class RunDirWatch:
    """A run's checkpoint directory seen from outside: committed steps and temporaries being written."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def temporaries(self) -> dict[Path, int]:
        """``{temporary dir: step}`` for every write in progress (or left behind by a kill)."""
        found: dict[Path, int] = {}
        try:
            entries = list(os.scandir(self.run_dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                head = entry.name[len(TMP_PREFIX) :].split("-", 1)[0]
                if head.isdigit():
                    found[Path(entry.path)] = int(head)
        return found

    def committed(self) -> list[int]:
        steps = []
        try:
            entries = list(os.scandir(self.run_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            step = parse_step(entry.name)
            if step is not None and os.path.exists(os.path.join(entry.path, MANIFEST_NAME)):
                steps.append(step)
        return sorted(steps)

    def latest(self) -> int:
        steps = self.committed()
        return steps[-1] if steps else 0


def compare_checkpoints(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    """``pyrecover checkpoint compare A B --optimizer``: weights and AdamW state, bit-exact (an
    ``EQUAL`` line is required besides exit 0: a compare that ran nothing must not pass)."""
    cli = [sys.executable, "-c", "from controller.cli import main; main()", "checkpoint"]
    done = subprocess.run(
        [*cli, "compare", str(a), str(b), "--optimizer"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=str(REPO),
        env=worker_env(),
    )
    if done.returncode == 0 and "EQUAL" not in done.stdout:
        done.returncode = 1  # never pass on a silent no-op
    return done


def tiny_worker_args(
    dataset: Path, tokenizer: Path, ckpt_dir: Path, name: str, *, steps: int, **flags: Any
) -> list[str]:
    """Worker flags for the fast fault runs: tiny model, 32-token sequences, async DCP saves every 5 steps."""
    opts: dict[str, Any] = {
        "dataset": dataset,
        "tokenizer-name-or-path": tokenizer,
        "model-preset": "tiny",
        "sequence-length": 32,
        "batch-size": 4,
        "model-dtype": "fp32",
        "seed": 7,
        "learning-rate": 3e-3,
        "lr-warmup-steps": 5,
        "training-steps": steps,
        "logging-frequency": 1,
        "checkpoint-frequency": 5,
        "checkpoint-dir": ckpt_dir,
        "experiment-name": name,
        "keep-last-k": 2,
    }
    opts |= {k.replace("_", "-"): v for k, v in flags.items()}
    argv = []
    for key, value in opts.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is False:
            argv.append(f"--no-{key}")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv
