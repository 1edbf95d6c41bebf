"""A 2-node SLURM job trains exactly like 2 ranks on one node.

Two runs go through the controller at the same time on the local cluster
(``deploy/slurm-local/up.sh --nodes 3``): one with ``nodes: 2, ntasks_per_node: 1`` (srun starts a
rank on each of two nodes; gloo meets at MASTER_ADDR, the first name of the job's node list), one
with ``nodes: 1, ntasks_per_node: 2``. Same seed, data and world size, so their final weights and
optimizer state must be bit-identical. Skipped with fewer than 2 nodes; a failure in CI.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from slurm_harness import (
    assert_ledger_adds_up,
    assert_same_weights,
    controller,
    hostnames,
    require_nodes,
    terminal,
    training,
)

from controller.scheduler.slurm import SlurmScheduler
from shared.states import SchedulerJobState as S
from worker.data.prepare import ensure_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm_wait]

STEPS = 20  # a periodic checkpoint at 10 and the final one: both go through the 2-rank DCP save


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    dataset, tokenizer = ensure_sample_data(tmp_path_factory.mktemp("data"))
    return Path(dataset), Path(tokenizer)


def test_two_node_run_is_bit_identical_to_two_ranks_on_one_node(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    require_nodes(2)
    started = time.monotonic()
    ckpt = tmp_path / "ckpt"
    body = training(sample, STEPS, ckpt, checkpoint_frequency=10)
    with controller(tmp_path / "controller", roots=[tmp_path, sample[0].parent, sample[1].parent]) as runs:
        across = runs.submit("nodes-2x1", body, nodes=2, ntasks_per_node=1)
        within = runs.submit("nodes-1x2", body, nodes=1, ntasks_per_node=2)
        runs.wait([across, within], terminal, limit=300)
        chains = {run_id: (runs.run(run_id), runs.jobs(run_id)) for run_id in (across, within)}
    for run, jobs in chains.values():
        assert run["state"] == "COMPLETED", (run, jobs)
        assert_ledger_adds_up(run)
        assert [j["end_reason"] for j in jobs] == ["finished"], jobs

    # SLURM's own record of each job: where it ran.
    ids = {run_id: str(jobs[0]["external_id"]) for run_id, (_, jobs) in chains.items()}
    polled = SlurmScheduler().poll(list(ids.values()))
    assert {polled[i].state for i in ids.values()} == {S.COMPLETED}, polled
    across_nodes = hostnames(polled[ids[across]].extra["NodeList"])
    within_nodes = hostnames(polled[ids[within]].extra["NodeList"])
    assert len(set(across_nodes)) == 2, f"the 2-node job ran on {across_nodes}"
    assert len(within_nodes) == 1, f"the 1-node job ran on {within_nodes}"
    log = (tmp_path / "controller" / "runs" / str(across) / "logs" / "attempt-0001.err").read_text()
    assert "world size 2" in log and "[rank 1]" in log, log[-2000:]

    assert_same_weights(ckpt / "nodes-2x1" / f"step-{STEPS}", ckpt / "nodes-1x2" / f"step-{STEPS}")
    print(
        f"\n2 nodes x 1 rank ({','.join(across_nodes)}) and 1 node x 2 ranks ({within_nodes[0]}): "
        f"{STEPS} steps, bit-identical; both runs in {time.monotonic() - started:.1f} s"
    )
