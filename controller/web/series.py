"""Metric series for the charts, kept in memory per run and topped up with new rows only.

A run page polls its chart data every few seconds. Reading 100,000 metric rows on each poll
costs far more than the page budget, but metrics are append-only: the cache keeps each recently
viewed run's points as a numpy table and on each poll reads only rows with a higher id. One
cheap indexed ``count(*)`` per poll guards the shortcut: if the DB holds a different number of
rows than cache + new rows (rows deleted, or ids committed out of order by concurrent writers),
the run's table is reloaded in full. Bounded: the least recently used runs are dropped.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.models import Metric
from controller.web.downsample import minmax_indices

SERIES = ("loss", "lr", "tokens_per_s", "mfu")
_COLUMNS = (Metric.id, Metric.step, Metric.attempt, *(getattr(Metric, key) for key in SERIES))
ID, STEP, ATTEMPT = 0, 1, 2
FIRST_SERIES = 3


@dataclass
class _Entry:
    table: npt.NDArray[np.float64]
    """Rows (id, step, attempt, *SERIES) in (step, id) order; NaN where a value was not reported."""
    max_id: int
    payloads: dict[int, bytes] = field(default_factory=dict)
    """Rendered chart JSON per ``max_points``: a poll that finds no new rows sends it as is."""


def _fetch(session: Session, run_id: int, after_id: int) -> npt.NDArray[np.float64]:
    stmt = select(*_COLUMNS).where(Metric.run_id == run_id)
    if after_id:
        stmt = stmt.where(Metric.id > after_id)
    rows = session.connection().execute(stmt).all()
    if not rows:
        return np.empty((0, len(_COLUMNS)), dtype=np.float64)
    # Column-wise conversion: far faster than handing numpy the Row objects; None becomes NaN.
    return np.column_stack([np.array(col, dtype=np.float64) for col in zip(*rows, strict=True)])


def _ordered(table: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    order = np.lexsort((table[:, ID], table[:, STEP]))
    result: npt.NDArray[np.float64] = table[order]
    return result


class SeriesCache:
    """Per-app cache of metric tables (thread-safe; at most ``max_runs`` runs held)."""

    def __init__(self, max_runs: int = 16) -> None:
        self.max_runs = max_runs
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def table(self, session: Session, run_id: int) -> npt.NDArray[np.float64]:
        return self._entry(session, run_id).table

    def payload_json(self, session: Session, run_id: int, max_points: int) -> bytes:
        """:func:`chart_payload` as JSON, rendered once per new data and reused by every poll."""
        entry = self._entry(session, run_id)
        body = entry.payloads.get(max_points)
        if body is None:
            payload = chart_payload(entry.table, run_id, max_points)
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
            entry.payloads[max_points] = body
        return body

    def _entry(self, session: Session, run_id: int) -> _Entry:
        count = int(session.scalar(select(func.count()).where(Metric.run_id == run_id)) or 0)
        with self._lock:
            entry = self._entries.get(run_id)
        if entry is not None and entry.table.shape[0] <= count:
            fresh = _fetch(session, run_id, entry.max_id) if entry.table.shape[0] < count else None
            if fresh is None or entry.table.shape[0] + fresh.shape[0] == count:
                if fresh is not None and fresh.shape[0]:
                    entry = _Entry(
                        table=_ordered(np.concatenate([entry.table, fresh])), max_id=int(fresh[:, ID].max())
                    )
                self._store(run_id, entry)
                return entry
        table = _ordered(_fetch(session, run_id, 0))
        entry = _Entry(table=table, max_id=int(table[:, ID].max()) if table.shape[0] else 0)
        self._store(run_id, entry)
        return entry

    def _store(self, run_id: int, entry: _Entry) -> None:
        with self._lock:
            self._entries[run_id] = entry
            self._entries.move_to_end(run_id)
            while len(self._entries) > self.max_runs:
                self._entries.popitem(last=False)


def chart_payload(table: npt.NDArray[np.float64], run_id: int, max_points: int) -> dict[str, Any]:
    """The charts' JSON: each series downsampled to ``max_points`` with :func:`minmax_indices`,
    plus the first step of each attempt (where the charts mark a resume)."""
    metrics: dict[str, dict[str, list[Any]]] = {}
    for k, key in enumerate(SERIES):
        ys = table[:, FIRST_SERIES + k]
        idx = minmax_indices(ys, max_points)
        metrics[key] = {"x": table[idx, STEP].astype(np.int64).tolist(), "y": ys[idx].tolist()}
    attempts: list[dict[str, int]] = []
    if table.shape[0]:
        numbers, first = np.unique(table[:, ATTEMPT], return_index=True)  # table is in step order
        attempts = [
            {"number": int(n), "start_step": int(table[i, STEP])} for n, i in zip(numbers, first, strict=True)
        ]
    span = float(table[-1, STEP] - table[0, STEP]) if table.shape[0] else 0.0
    markers = collapse_markers([(a["number"], a["start_step"]) for a in attempts[1:]], span)
    return {
        "run_id": run_id,
        "points": int(table.shape[0]),
        "metrics": metrics,
        "attempts": attempts,
        "markers": markers,
    }


MARKER_GAP = 0.03
"""Resumes closer than this fraction of the charts' step span share one marker (at 600 px, ~18 px)."""


def collapse_markers(
    starts: list[tuple[int, int]], span: float, gap: float = MARKER_GAP
) -> list[dict[str, Any]]:
    """One marker per cluster of attempt starts: ``(number, start_step)`` pairs in step order, merged
    while each is within ``gap * span`` steps of the cluster's first. A marker sits at that first step
    and reads ``#4`` or ``#9–#13``; ``attempts`` lists every number it stands for."""
    markers: list[dict[str, Any]] = []
    width = gap * span
    for number, step in sorted(starts, key=lambda a: (a[1], a[0])):
        last = markers[-1] if markers else None
        if last is not None and step - last["step"] <= width:
            last["attempts"].append(number)
        else:
            markers.append({"step": step, "attempts": [number]})
    for marker in markers:
        numbers = marker["attempts"]
        marker["label"] = f"#{numbers[0]}" if len(numbers) == 1 else f"#{min(numbers)}–#{max(numbers)}"
    return markers
