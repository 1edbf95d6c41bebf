"""What the run page reads from the database: retention marks, the summary, MFU, a free name."""

from __future__ import annotations

from pathlib import Path

from controller.db.models import Run
from controller.web import queries
from tests.controller.web.web_seed import DELETED_STEPS, add_hostile_run, add_run, make_app, seed_dashboard

NOW = 1_900_000_000.0


def test_run_detail_marks_deleted_checkpoints_and_counts_what_is_on_disk(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    seeded = seed_dashboard(factory)
    with factory() as session:
        run = session.get(Run, seeded.chart_run)
        assert run is not None
        detail = queries.run_detail(session, run, now=NOW)
        assert queries.mfu_measured(session, seeded.chart_run)
        assert not queries.mfu_measured(session, seeded.cpu_run)  # CPU: no peak FLOP/s, no MFU
    marks = {c.step: c.on_disk for c in detail.checkpoints}
    assert marks == {2500: True, 2200: True, 1600: False, 1100: False, 500: False}
    assert {s for s, on in marks.items() if not on} == set(DELETED_STEPS)
    assert (detail.checkpoints_on_disk, detail.checkpoints_total) == (2, 5)
    assert detail.latest_checkpoint_step == 2500 and detail.loss_label == "last loss"
    assert detail.wall_seconds > 0 and detail.wall_seconds == sum(p.seconds for p in detail.ledger)


def test_the_configuration_of_a_hostile_row_is_shown_redacted(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    hostile_run = add_hostile_run(factory)
    with factory() as session:
        run = session.get(Run, hostile_run)
        assert run is not None
        detail = queries.run_detail(session, run, now=NOW)
    rows = {(g.key, r.key): r for g in detail.config for r in g.rows}
    env = rows[("resources", "env")].value
    assert "hf_secret_value_never_shown" not in env and "HF_TOKEN" not in env
    assert "HF_TOKEN" in rows[("resources", "secret_env")].value  # the name stays, the value never
    assert rows[("training", "training_steps")].default is None  # at its default: nothing beside it


def test_free_name_skips_taken_copies(tmp_path: Path) -> None:
    _app, factory, _ = make_app(tmp_path)
    for name in ("base", "base-2", "base-3", "x" * 63):
        add_run(factory, name, "COMPLETED")
    with factory() as session:
        assert queries.free_name(session, "base") == "base-4"
        assert queries.free_name(session, "base-3") == "base-4"
        assert queries.free_name(session, "fresh-9") == "fresh-10"
        long = queries.free_name(session, "x" * 63)
    assert long == "x" * 61 + "-2" and len(long) <= 63
