"""Where things live on disk: the controller's run directories and the checkpoint layout.

* ``<data_dir>/runs/<run id>/``: the run's own directory on the controller's side — the worker
  token file (0600), the secret environment file (0600), the reporter's spool,
  ``logs/attempt-<NNNN>.{out,err}``; workers run there.
* ``<checkpoint_dir>/<run name>/step-<N>/`` holds one committed checkpoint; it counts only if its
  ``manifest.json`` is present and valid. Writers use a hidden temporary sibling and rename it into
  place, so a reader never sees a half-written ``step-<N>``.
* ``<checkpoint_dir>/<run name>/.quarantine-step-<N>-<why>-<hex>/``: a checkpoint that failed
  verification (or a ``step-<N>`` without a valid manifest), moved out of the committed namespace.
  Nothing deletes it automatically: it may be the only copy of the run's progress.
* ``<checkpoint_dir>/<run name>/.watchdog/<job key>/``: the ranks' heartbeats and, after a hang,
  their stack dumps (``worker.watchdog``).

See docs/architecture.md, "Checkpoint layout".
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

MANIFEST_NAME = "manifest.json"
TOKEN_FILE_NAME = "worker.token"
"""The run-scoped worker token, in the run directory (never on a command line or in the environment)."""
SECRET_ENV_FILE_NAME = "secret.env"
"""The run's secret environment values (0600, ``shared.envfile``), written once when it is created."""
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-step-"
QUARANTINE_PREFIX = ".quarantine-step-"
"""Checkpoints moved aside because they failed verification; never removed by retention or clean-up."""
WATCHDOG_DIRNAME = ".watchdog"
LOSS_CSV_NAME = "loss.csv"
COMMITTED_MARKER = ".committed"
"""Written into a run directory with its first committed checkpoint. Only from then on are the rows
of its ``loss.csv`` a past that a fresh start would train over: before it, they are the uncommitted
steps of a first attempt that died (kill -9, preemption) before its first save."""
_STEP_RE = re.compile(r"^step-([0-9]+)$", re.ASCII)  # not \d: 'step-١٢' is no step


def run_dir(data_dir: Path, run_id: int) -> Path:
    """The run's own directory under the controller's data dir (token file, spool, attempt logs)."""
    return Path(data_dir) / "runs" / str(run_id)


def run_checkpoint_dir(checkpoint_root: Path, run_name: str) -> Path:
    return checkpoint_root / run_name


TRACKERS_DIR_NAME = "trackers"
"""``<checkpoint_dir>/<run name>/trackers/``: the tracker run's identity (``state.json``) and the
trackers' own files (``tensorboard/``, ``wandb/``), shared by every attempt of the run."""


def tracker_dir(checkpoint_root: Path, run_name: str) -> Path:
    return run_checkpoint_dir(checkpoint_root, run_name) / TRACKERS_DIR_NAME


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{STEP_PREFIX}{step}"


def step_dir(checkpoint_root: Path, run_name: str, step: int) -> Path:
    return run_checkpoint_dir(checkpoint_root, run_name) / step_dir_name(step)


def tmp_step_dir(checkpoint_root: Path, run_name: str, step: int) -> Path:
    """A unique temporary sibling for writing ``step-<N>`` before the atomic rename."""
    return run_checkpoint_dir(checkpoint_root, run_name) / f"{TMP_PREFIX}{step}-{uuid.uuid4().hex[:8]}"


def quarantine_dir(path: Path, step: int, why: str) -> Path:
    """A unique quarantine name beside ``path`` (a ``step-<N>`` directory) for a checkpoint that failed."""
    return path.with_name(f"{QUARANTINE_PREFIX}{step}-{why}-{uuid.uuid4().hex[:8]}")


def is_quarantined(name: str) -> bool:
    """A quarantined checkpoint's directory name, including those earlier versions moved aside as
    ``.tmp-step-<N>-corrupt-*`` / ``-invalid-*`` (and would have deleted after the next commit)."""
    if name.startswith(QUARANTINE_PREFIX):
        return True
    return name.startswith(TMP_PREFIX) and ("-corrupt-" in name or "-invalid-" in name)


def parse_step(name: str) -> int | None:
    """``"step-120"`` → 120; anything else (temporaries, stray files) → ``None``. Numeric, never lexical."""
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def attempt_log_paths(run_dir: Path, attempt: int) -> tuple[Path, Path]:
    """Per-attempt stdout/stderr files; one pair per attempt so nothing is ever overwritten."""
    return run_dir / "logs" / f"attempt-{attempt:04d}.out", run_dir / "logs" / f"attempt-{attempt:04d}.err"


def looks_local(value: str, cwd: Path | None = None) -> bool:
    """Whether a dataset or tokenizer value means a path here, never a Hugging Face hub id.

    Hub ids are ``name`` or ``org/name``. A value is a path when it exists, is absolute or starts
    with ``.``/``~``, has more than one ``/`` or a backslash, or when its first component is an
    existing directory (``data/tokenizr`` is a typo inside ``data/``, not the hub's ``data`` org).
    """
    base = cwd or Path.cwd()
    if value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value:
        return True
    first = value.split("/", 1)[0]
    return (base / value).exists() or ("/" in value and (base / first).is_dir())


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same place: equal once normalised, or once symlinks are resolved
    (a checkpoint root reached through a symlink). Reads nothing but the path components."""
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    return os.path.realpath(a) == os.path.realpath(b)


def absolute_local(value: str) -> str | None:
    """``value`` made absolute against the current directory when it is a relative local path
    (``looks_local``); None when it is absolute already, starts with ``~`` or is not a local path
    (a hub name). How the controller hands relative inputs to workers, which run elsewhere."""
    if Path(value).is_absolute() or not looks_local(value) or value.startswith("~"):
        return None
    return str(Path(value).absolute())
