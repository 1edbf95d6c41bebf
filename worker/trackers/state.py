"""The tracker run's identity and high-water mark, persisted beside the checkpoints.

``<checkpoint_dir>/<run name>/trackers/state.json`` holds the tracker run id (made once, at the
run's first logged step: the run name, the controller's run id when there is one, and a random
suffix, so two controllers or two standalone runs of one name never share a tracker run) and
``logged_through``, the highest step handed to the trackers. Every attempt reads it, so all append
to one tracker run, and a step at or below the mark is never logged again: steps only go up.

The mark is written *before* the step goes to the trackers (atomically: a temporary file renamed
over the old one): a crash in between loses that one step from the charts rather than logging it
twice. Nothing here is taken from the environment or the user without validation: the directory
is built from the validated checkpoint dir and run name, a run id read back must match
``RUN_ID_PATTERN``, and the controller's run id must be a plain number.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.json"
FORMAT = 1
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)
_DIGITS_RE = re.compile(r"^[0-9]{1,18}$")


class TrackerStateError(ValueError):
    """``state.json`` exists but cannot be trusted; the message says why and what to do."""


def new_run_id(run_name: str, controller_run_id: str | None) -> str:
    """``<run name>-<controller run id>-<8 hex>``, or ``<run name>-<8 hex>`` when standalone."""
    parts = [run_name[:40]]
    if controller_run_id is not None and _DIGITS_RE.fullmatch(controller_run_id):
        parts.append(controller_run_id)
    parts.append(secrets.token_hex(4))
    run_id = "-".join(parts)
    if not _RUN_ID_RE.fullmatch(run_id):
        raise TrackerStateError(f"cannot make a tracker run id from run name {run_name!r}")
    return run_id


@dataclass
class TrackerState:
    """The persisted identity (``run_id``) and mark (``logged_through``) of one run's tracker run."""

    path: Path
    run_id: str
    run_name: str
    logged_through: int

    @classmethod
    def open(cls, directory: Path, *, run_name: str, controller_run_id: str | None) -> TrackerState:
        """Read ``directory/state.json``, or create it for a run that never logged (rank 0 only)."""
        path = directory / STATE_FILE
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            state = cls(path, new_run_id(run_name, controller_run_id), run_name, 0)
            state.write()
            return state
        except (OSError, UnicodeDecodeError) as exc:
            raise TrackerStateError(f"{path}: unreadable: {exc}") from exc
        return cls._parse(path, raw, run_name=run_name)

    @classmethod
    def _parse(cls, path: Path, raw: str, *, run_name: str) -> TrackerState:
        fix = "; move it aside to start a new tracker run"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TrackerStateError(f"{path}: not JSON ({exc}){fix}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TrackerStateError(f"{path}: not a format-{FORMAT} tracker state{fix}")
        run_id, mark = data.get("run_id"), data.get("logged_through")
        if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
            raise TrackerStateError(f"{path}: run_id {run_id!r} does not match {RUN_ID_PATTERN}{fix}")
        if not isinstance(mark, int) or isinstance(mark, bool) or mark < 0:
            raise TrackerStateError(f"{path}: logged_through {mark!r} is not a step{fix}")
        if data.get("run_name") != run_name:
            raise TrackerStateError(f"{path}: belongs to run {data.get('run_name')!r}, not {run_name!r}{fix}")
        return cls(path, run_id, run_name, mark)

    def advance(self, step: int) -> None:
        """Record that ``step`` (> the mark) is handed to the trackers; durable before they see it."""
        if step <= self.logged_through:
            raise ValueError(f"step {step} is not beyond the mark {self.logged_through}")
        self.logged_through = step
        self.write()

    def write(self) -> None:
        body = {"format": FORMAT, "run_id": self.run_id, "run_name": self.run_name}
        body["logged_through"] = self.logged_through
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
