"""Heartbeat files: liveness, who stalled the job, who is only busy, who reports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.events import HangPhase
from shared.schemas import HungRank
from worker.distributed import DistInfo
from worker.heartbeats import READING_DATA, HeartbeatBoard, open_job_directory, prune_abandoned

STALE = 3.0


def beat(rank: int, *, age: float = 0.0, phase: str = "step", step: int = 8, **kw: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "rank": rank,
        "host": f"node{rank}",
        "pid": 100 + rank,
        "phase": phase,
        "step": step,
        "doing": "computing",
        "since": now - 10,
        "limit": 60.0,
        "hung": False,
        "written_at": now - age,
        **kw,
    }


def board(tmp_path: Path, rank: int = 0, world: int = 4) -> HeartbeatBoard:
    return HeartbeatBoard(tmp_path, rank=rank, world_size=world, stale_after=STALE)


def test_write_then_read_and_garbage_is_ignored(tmp_path: Path) -> None:
    b0, b1 = board(tmp_path, 0, 3), board(tmp_path, 1, 3)
    b1.write(beat(1))
    (tmp_path / "rank-2.json").write_text("{torn")
    assert b0.read_others() == {1: json.loads((tmp_path / "rank-1.json").read_text())}
    b1.remove()
    assert b0.read_others() == {}
    board(tmp_path / "gone", 0, 1).write(beat(0))  # a missing directory is not created, nor fatal
    assert not (tmp_path / "gone").exists()


def test_suspects_stopped_ranks_first_then_readers_then_laggards(tmp_path: Path) -> None:
    me = beat(0)
    peers = {
        1: beat(1, age=STALE + 5),  # SIGSTOPped: its heartbeat went stale
        2: beat(2, doing=READING_DATA),
        3: beat(3, step=7),
    }
    found = board(tmp_path).suspects(me, peers)
    assert [(s["rank"], s["host"], s["reason"].split(" ")[0]) for s in found] == [
        (1, "node1", "not"),
        (2, "node2", "stuck"),
        (3, "node3", "behind"),
    ]
    assert found[0]["heartbeat_age_seconds"] >= STALE + 5
    for s in found:
        HungRank.model_validate(s)  # what the hung event carries


def test_a_rank_that_never_wrote_is_not_running_and_hostile_fields_are_cleaned(tmp_path: Path) -> None:
    peers = {1: beat(1, age=99, host="x" * 999, step=-3, phase="\x00evil", doing=None)}
    found = board(tmp_path, world=3).suspects(beat(0), peers)
    assert [s["rank"] for s in found] == [1, 2]
    assert found[1]["host"] == "unknown" and found[1]["heartbeat_age_seconds"] is None
    assert len(found[0]["host"]) == 256 and found[0]["step"] is None and found[0]["phase"] is None
    for s in found:
        HungRank.model_validate(s)


def test_everyone_waiting_on_everyone_names_nobody(tmp_path: Path) -> None:
    assert board(tmp_path, world=3).suspects(beat(0), {1: beat(1), 2: beat(2)}) == []


def test_a_peer_in_another_phase_within_its_limit_is_busy_not_hung(tmp_path: Path) -> None:
    b = board(tmp_path, rank=1, world=2)
    saving = beat(0, phase="save", step=8, limit=120.0)
    assert b.busy_peer({0: saving}, phase=HangPhase.STEP, step=9) == 0
    assert b.busy_peer({0: {**saving, "since": time.time() - 200}}, phase=HangPhase.STEP, step=9) is None
    assert b.busy_peer({0: {**saving, "hung": True}}, phase=HangPhase.STEP, step=9) is None
    assert b.busy_peer({0: beat(0, age=STALE + 1, phase="save")}, phase=HangPhase.STEP, step=9) is None
    assert b.busy_peer({0: beat(0, step=9)}, phase=HangPhase.STEP, step=9) is None  # waits as we do


def test_rank_0_reports_while_it_runs_else_the_lowest_running_rank(tmp_path: Path) -> None:
    assert board(tmp_path, rank=2).reporting_rank({0: beat(0), 1: beat(1)}) == 0
    assert board(tmp_path, rank=2).reporting_rank({0: beat(0, age=60), 1: beat(1)}) == 1
    assert board(tmp_path, rank=2).reporting_rank({0: beat(0, age=60)}) == 2
    assert board(tmp_path, rank=2).pending({0: beat(0, hung=True), 1: beat(1), 3: beat(3, age=60)}) == [1]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_job_directory_is_created_by_rank_0(tmp_path: Path, enabled: bool) -> None:
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    run_dir = tmp_path / "ckpt" / "run"
    directory, created = open_job_directory(run_dir, info=info, enabled=enabled)
    if not enabled:
        assert directory is None and not created and not run_dir.exists()
        return
    assert directory is not None and directory.is_dir() and directory.parent == run_dir / ".watchdog"
    assert created
    again, created_again = open_job_directory(run_dir, info=info, enabled=True)
    assert again != directory and not created_again


def test_abandoned_job_directories_are_pruned_but_a_hang_is_kept(tmp_path: Path) -> None:
    old = time.time() - 2 * 86_400
    killed, hung, live = (tmp_path / name for name in ("killed", "hung", "live"))
    for job in (killed, hung, live):
        job.mkdir()
        (job / "rank-0.json").write_text("{}")
    (hung / "stacks-rank0.txt").write_text("Thread 0x...")
    for job in (killed, hung):
        for path in (*job.iterdir(), job):
            os.utime(path, (old, old))
    assert prune_abandoned(tmp_path) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hung", "live"]
