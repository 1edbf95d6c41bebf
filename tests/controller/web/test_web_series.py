"""The chart-data cache: tops up with new rows only, reloads when the DB disagrees, stays bounded."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete

from controller.db.models import Metric
from controller.web.series import SeriesCache, chart_payload, collapse_markers
from tests.controller.web.web_seed import add_metrics, add_run, make_app

T = datetime(2026, 1, 1, tzinfo=UTC)


def test_cache_appends_new_rows_and_reloads_on_mismatch(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    run_id = add_run(factory, "cached", "RUNNING")
    other = add_run(factory, "other", "RUNNING")
    cache = SeriesCache(max_runs=1)
    with factory() as session:
        assert cache.table(session, run_id).shape[0] == 0
    with factory.begin() as session:
        add_metrics(session, run_id, 1, range(0, 50), T)
    with factory() as session:
        assert cache.table(session, run_id).shape[0] == 50
    with factory.begin() as session:
        add_metrics(session, run_id, 2, range(40, 60), T)  # a resumed attempt re-trains steps 40..49
    with factory() as session:
        table = cache.table(session, run_id)
    steps = table[:, 1].tolist()
    assert len(steps) == 70 and steps == sorted(steps)
    payload = chart_payload(table, run_id, 1000)
    assert payload["attempts"] == [{"number": 1, "start_step": 0}, {"number": 2, "start_step": 40}]
    assert payload["points"] == 70 and len(payload["metrics"]["loss"]["x"]) == 70
    with factory.begin() as session:  # rows removed behind the cache's back: count differs → reload
        session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.attempt == 2))
    with factory() as session:
        assert cache.table(session, run_id).shape[0] == 50
        cache.table(session, other)
    assert list(cache._entries) == [other]  # bounded: the least recently used run was dropped


def test_payload_is_bounded_and_keeps_extremes(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    run_id = add_run(factory, "big", "RUNNING")
    with factory.begin() as session:
        add_metrics(session, run_id, 1, range(0, 20_000), T)
    with factory() as session:
        table = SeriesCache().table(session, run_id)
    payload = chart_payload(table, run_id, 500)
    loss = payload["metrics"]["loss"]
    assert len(loss["x"]) <= 500
    assert max(loss["y"]) == table[:, 3].max() and min(loss["y"]) == table[:, 3].min()


def test_payload_json_is_reused_until_new_points_arrive(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    run_id = add_run(factory, "polled", "RUNNING")
    with factory.begin() as session:
        add_metrics(session, run_id, 1, range(0, 30), T)
    cache = SeriesCache()
    with factory() as session:
        first = cache.payload_json(session, run_id, 100)
        assert cache.payload_json(session, run_id, 100) is first
    with factory.begin() as session:
        add_metrics(session, run_id, 1, range(30, 40), T)
    with factory() as session:
        fresh = cache.payload_json(session, run_id, 100)
    assert json.loads(fresh)["points"] == 40 and json.loads(first)["points"] == 30


def test_close_resumes_share_one_marker_and_far_ones_keep_their_own() -> None:
    starts = [(2, 1000), (3, 1000), (4, 1010), (5, 1090), (6, 1030), (7, 2000), (8, 2100)]
    markers = collapse_markers(starts, span=3000.0, gap=0.03)  # 90 steps merge
    assert [(m["step"], m["label"], m["attempts"]) for m in markers] == [
        (1000, "#2–#6", [2, 3, 4, 6, 5]),
        (2000, "#7", [7]),
        (2100, "#8", [8]),
    ]
    assert collapse_markers([], span=0.0) == []
    assert [m["label"] for m in collapse_markers([(2, 5), (3, 5)], span=0.0)] == ["#2–#3"]  # one step


def test_the_payload_marks_every_resume_but_the_first_attempt() -> None:
    table = np.array([[i + 1, step, attempt, 1.0, 1.0, 1.0, np.nan] for i, (step, attempt) in enumerate(
        [(0, 1), (1, 1), (2, 2), (2, 3), (3, 3), (100, 4)]
    )])  # fmt: skip
    payload = chart_payload(table, 1, 1000)
    assert [m["label"] for m in payload["markers"]] == ["#2–#3", "#4"]
    assert payload["metrics"]["mfu"] == {"x": [], "y": []}  # never measured: nothing to draw
