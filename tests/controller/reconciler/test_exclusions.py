"""The run's exclusion list through the reconcile pass: who joins it, --exclude, expiry, shrink, wait."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeScheduler
from sqlalchemy import select
from test_reconciler import World

from controller.db.models import NodeExclusion, Run
from controller.reconciler import exclusions
from controller.scheduler.base import JobStatus, NodeInventory
from controller.services import first_admin
from controller.services.exclusions import clear_exclusions
from shared.schemas import RunCreate
from shared.states import RunState
from shared.states import SchedulerJobState as J


@dataclass
class FakeCluster(FakeScheduler):
    """A SLURM-like fake: named nodes with states (sinfo's view) and a node list per job."""

    name: str = "slurm"
    nodes: dict[str, str] = field(default_factory=lambda: {"vm-1": "idle", "vm-2": "idle", "vm-3": "idle"})
    listed: int = 0

    def node_states(self, partition: str | None) -> dict[str, str]:
        self.listed += 1
        return dict(self.nodes)

    def end(self, job_id: str, state: J, node_list: str, exit_code: int = 1) -> None:
        self.states[job_id] = JobStatus(
            job_id=job_id, state=state, exit_code=exit_code, extra={"NodeList": node_list}
        )


class ClusterWorld(World):
    def make(self, *, nodes: int = 2, batch_size: int = 4, **policy: Any) -> int:
        spec = RunCreate.model_validate(
            {
                "name": f"run{self.clock.now:.0f}",
                "training": {
                    "dataset": "d.parquet",
                    "tokenizer_name_or_path": "tok",
                    "training_steps": 100,
                    "lr_warmup_steps": 1,
                    "batch_size": batch_size,
                },
                "resources": {"scheduler": "slurm", "time_limit": "1m", "nodes": nodes},
                "policy": {"backoff_seconds": 10, "max_failures_without_progress": 5, **policy},
            }
        )
        with self.factory() as s:
            run = Run(
                name=spec.name,
                owner_id=first_admin(s).id,
                spec=spec.model_dump(mode="json"),
                scheduler="slurm",
                training_steps=100,
            )
            s.add(run)
            s.commit()
            return int(run.id)

    def excluded(self, run_id: int) -> dict[str, tuple[str, int]]:
        with self.factory() as s:
            rows = s.scalars(select(NodeExclusion).where(NodeExclusion.run_id == run_id)).all()
            return {r.host: (r.reason, r.attempt) for r in rows}

    def resubmit(self) -> None:
        """Past the failure's backoff: the next pass submits."""
        self.clock.advance(3600)
        self.tick()


@pytest.fixture
def cw(tmp_path: Path) -> Iterator[ClusterWorld]:
    yield ClusterWorld(tmp_path, FakeCluster())


def _cluster(cw: ClusterWorld) -> FakeCluster:
    assert isinstance(cw.sched, FakeCluster)
    return cw.sched


def test_the_fake_is_a_node_inventory() -> None:
    assert isinstance(FakeCluster(), NodeInventory)
    assert not isinstance(FakeScheduler(), NodeInventory)


def test_node_fail_excludes_the_node_that_went_down_and_the_next_attempt_avoids_it(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make()
    cw.tick()
    assert list(sched.submitted[0].exclude) == []
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    assert cw.excluded(run_id) == {"vm-2": ("node_fail", 1)}
    assert any(e.kind == "nodes_excluded" and "vm-2" in e.message for e in cw.events(run_id))
    cw.resubmit()
    second = sched.submitted[-1]
    assert second.attempt == 2 and list(second.exclude) == ["vm-2"] and second.resources.nodes == 2


def test_node_fail_without_a_node_down_excludes_every_node_of_the_job(cw: ClusterWorld) -> None:
    run_id = cw.make(min_nodes=1)
    cw.tick()
    _cluster(cw).end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    assert set(cw.excluded(run_id)) == {"vm-1", "vm-2"}


def test_a_hang_excludes_the_suspects_hosts_of_the_job_only(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make()
    cw.tick()
    suspects = [
        {"rank": 1, "host": "vm-2", "reason": "not running"},
        {"rank": 2, "host": "vm-9", "reason": "hung"},  # not a node of this job: a false claim
        {"rank": 3, "host": "bad;host", "reason": "hung"},
    ]
    cw.report(run_id, 1, {"type": "hung", "step": 5, "phase": "step", "rank": 0, "host": "vm-1",
                          "stalled_seconds": 90, "limit_seconds": 60, "suspects": suspects})  # fmt: skip
    sched.end("job-1", J.FAILED, "vm-[1-2]", exit_code=5)
    # The other engineer's end reasons may or may not map exit 5 to ``hung`` yet; test the rule itself.
    with cw.factory() as s:
        run = s.get(Run, run_id)
        attempt = cw.attempts(run_id)[0]
        assert run is not None
        found = exclusions.hosts_to_exclude(
            s, attempt, exclusions.EndReason.HUNG, sched.states["job-1"], None
        )
    assert found == [(exclusions.ExclusionReason.HUNG, "vm-2")]


def test_a_hang_that_ended_the_attempt_failed_excludes_the_suspect_through_the_pass(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make()
    cw.tick()
    suspects = [{"rank": 1, "host": "vm-2", "reason": "not running"}]
    cw.report(run_id, 1, {"type": "hung", "step": 5, "phase": "step", "rank": 0, "host": "vm-1",
                          "stalled_seconds": 90, "limit_seconds": 60, "suspects": suspects},
              {"type": "failed", "step": 5, "error": "hung: rank 1 on vm-2 (not running)"})  # fmt: skip
    sched.end("job-1", J.FAILED, "vm-[1-2]", exit_code=5)
    cw.tick()
    assert cw.excluded(run_id) == {"vm-2": ("hung", 1)}


def test_a_failure_pinned_on_a_host_excludes_it_and_a_plain_failure_does_not(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make()
    cw.tick()
    cw.report(run_id, 1, {"type": "failed", "step": 3, "error": "RuntimeError: boom"})
    sched.end("job-1", J.FAILED, "vm-[1-2]")
    cw.tick()
    assert cw.excluded(run_id) == {}
    cw.resubmit()
    cw.report(run_id, 2, {"type": "failed", "step": 3, "error": "NCCL error: unhandled system error",
                          "host": "vm-1"})  # fmt: skip
    sched.end("job-2", J.FAILED, "vm-[1-2]")
    cw.tick()
    assert cw.excluded(run_id) == {"vm-1": ("worker_pinned", 2)}


def test_entries_expire_after_the_policy_duration(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    cw.make(exclude_node_seconds=600, backoff_seconds=1)
    cw.tick()
    sched.nodes["vm-2"] = "down"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    cw.clock.advance(30)
    cw.tick()
    assert list(sched.submitted[-1].exclude) == ["vm-2"]
    sched.nodes["vm-2"] = "idle"
    sched.end("job-2", J.FAILED, "vm-[1,3]")
    cw.tick()
    cw.clock.advance(601)
    cw.tick()
    assert sched.submitted[-1].attempt == 3 and list(sched.submitted[-1].exclude) == []


def test_zero_seconds_excludes_nothing(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make(exclude_node_seconds=0)
    cw.tick()
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    assert cw.excluded(run_id) == {}


def test_too_few_nodes_and_no_min_nodes_waits_with_the_reason(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    sched.nodes = {"vm-1": "idle", "vm-2": "idle"}
    run_id = cw.make()
    cw.tick()
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    cw.resubmit()
    cw.resubmit()
    assert len(sched.submitted) == 1
    waits = [e.message for e in cw.events(run_id) if e.kind == "waiting_for_nodes"]
    assert len(waits) == 1 and "1 usable node(s) left after excluding vm-2" in waits[0]
    assert "policy.min_nodes unset" in waits[0]
    assert cw.run(run_id).state == RunState.QUEUED
    sched.nodes["vm-3"] = "idle"  # a node joins the partition: the run goes on at full size
    cw.resubmit()
    assert len(sched.submitted) == 2 and sched.submitted[-1].resources.nodes == 2


def test_too_few_nodes_shrinks_to_min_nodes_when_the_batch_divides(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    sched.nodes = {"vm-1": "idle", "vm-2": "idle"}
    run_id = cw.make(min_nodes=1, batch_size=4)
    cw.tick()
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    cw.resubmit()
    second = sched.submitted[-1]
    assert second.attempt == 2 and second.resources.nodes == 1 and list(second.exclude) == ["vm-2"]
    assert any(e.kind == "nodes_shrunk" for e in cw.events(run_id))


def test_a_shrink_the_batch_does_not_divide_waits(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    sched.nodes = {f"vm-{i}": "idle" for i in range(1, 5)}
    run_id = cw.make(nodes=4, min_nodes=3, batch_size=8)
    cw.tick()
    sched.nodes["vm-4"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-4]")
    cw.tick()
    cw.resubmit()
    assert len(sched.submitted) == 1
    [wait] = [e.message for e in cw.events(run_id) if e.kind == "waiting_for_nodes"]
    assert "divides batch_size 8" in wait


def test_no_inventory_no_exclusions_no_sinfo(cw: ClusterWorld) -> None:
    """A run with nothing excluded never asks the scheduler for its nodes."""
    sched = _cluster(cw)
    cw.make()
    cw.tick()
    assert sched.listed == 0


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("vm-[1-3,5]", ["vm-1", "vm-2", "vm-3", "vm-5"]),
        ("gpu[01-02],cpu7", ["gpu01", "gpu02", "cpu7"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("vm-1,vm-1", ["vm-1"]),
        ("", []),
        ("(null)", []),
        ("a;b,ok", ["ok"]),
        ("x[1-99999]", []),
    ],
)
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert exclusions.expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    ("state", "usable"),
    [("idle", True), ("mixed", True), ("allocated", True), ("idle*", False), ("down*", False),
     ("drained", False), ("draining", False), ("down", False), ("idle~", True), ("", False)],
)  # fmt: skip
def test_node_state_usable(state: str, usable: bool) -> None:
    assert exclusions.node_state_usable(state) is usable


def test_the_run_is_excluded_from_nothing_after_clear(cw: ClusterWorld) -> None:
    sched = _cluster(cw)
    run_id = cw.make()
    cw.tick()
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-[1-2]")
    cw.tick()
    assert list(sched.submitted[-1].exclude) == ["vm-2"]
    with cw.factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        assert clear_exclusions(s, run, by="admin") == 1
        s.commit()
    assert any(e.kind == "exclusions_cleared" and "by admin: vm-2" in e.message for e in cw.events(run_id))
    sched.end("job-2", J.FAILED, "vm-[1,3]")
    cw.tick()
    cw.resubmit()
    assert sched.submitted[-1].attempt == 3 and list(sched.submitted[-1].exclude) == []


def test_a_successor_queued_before_a_node_was_blamed_is_replaced_by_one_that_excludes_it(
    tmp_path: Path,
) -> None:
    """Attempt 1 announced its stop (so attempt 2 was pre-queued, excluding nothing), then its node
    failed during the final save: attempt 2 could start on that node. It is cancelled while it waits
    and attempt 3 excludes the node; the cancelled one never ran, so it counts against no budget."""
    sched = FakeCluster(supports_dependencies=True)
    cw = ClusterWorld(tmp_path, sched)
    run_id = cw.make(nodes=1, max_failures_without_progress=3)
    cw.tick()
    sched.set("job-1", J.RUNNING)
    cw.tick()
    cw.report(run_id, 1, {"type": "stopping", "step": 0, "reason": "deadline"})
    cw.tick()
    assert [(s.attempt, list(s.exclude)) for s in sched.submitted] == [(1, []), (2, [])]
    sched.nodes["vm-2"] = "down*"
    sched.end("job-1", J.NODE_FAIL, "vm-2")
    cw.tick()
    assert sched.cancelled == ["job-2"]
    ended = [(a.number, a.end_reason) for a in cw.attempts(run_id)][:2]
    assert ended == [(1, "node_fail"), (2, "cancelled")]
    cw.resubmit()  # a node failure has no backoff: attempt 3 may already be out
    third = sched.submitted[-1]
    assert third.attempt == 3 and list(third.exclude) == ["vm-2"] and third.dependency is None
    # Attempt 3 fails too: 2 attempts without progress, not 3 (the cancelled one never ran).
    sched.end("job-3", J.FAILED, "vm-1")
    cw.tick()
    assert cw.run(run_id).state == RunState.QUEUED


def test_a_successor_queued_before_an_end_that_blames_no_host_is_kept(tmp_path: Path) -> None:
    sched = FakeCluster(supports_dependencies=True)
    cw = ClusterWorld(tmp_path, sched)
    run_id = cw.make(nodes=1)
    cw.tick()
    sched.set("job-1", J.RUNNING)
    cw.tick()
    cw.report(run_id, 1, {"type": "stopping", "step": 0, "reason": "deadline"})
    cw.tick()
    sched.end("job-1", J.COMPLETED, "vm-2", exit_code=0)
    cw.tick()
    assert sched.cancelled == []
    assert cw.attempts(run_id)[1].state == "PENDING"
