"""The per-step loss CSV (rank 0): ``<checkpoint_dir>/<experiment>/loss.csv`` with ``step,loss``.

Appended across resumes and never wiped. Rows after the resumed step belong to steps that are about
to be trained again, so they are dropped first (atomic rewrite). Losses are written with ``repr`` —
the shortest string that round-trips the float — so an interrupted and resumed run produces a file
byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

HEADER = "step,loss"


class LossCSV:
    """Append-only loss log that is consistent with the checkpoint a run resumed from."""

    def __init__(self, path: Path, *, resume_step: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._fh: TextIO | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _truncate_after(self, resume_step: int) -> None:
        if not self.path.exists():
            self._write_atomic([])
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        rows = [line for line in lines[1:] if line.strip()]
        keep = [row for row in rows if int(row.split(",", 1)[0]) <= resume_step]
        if not lines or lines[0] != HEADER or len(keep) != len(rows) or len(lines) - 1 != len(rows):
            self._write_atomic(keep)

    def _write_atomic(self, rows: list[str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join([HEADER, *rows]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, step: int, loss: float) -> None:
        if self._fh is None:
            raise RuntimeError("loss CSV is closed")
        self._fh.write(f"{step},{float(loss)!r}\n")
        self._fh.flush()  # a killed job keeps every row up to its last step

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_losses(path: Path) -> dict[int, float]:
    """``{step: loss}`` from a loss CSV."""
    out: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            step, loss = line.split(",", 1)
            out[int(step)] = float(loss)
    return out
