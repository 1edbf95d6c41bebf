"""Which failure messages pin a fault on the host, and the policy fields of the exclusion list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.exclusions import pins_host
from shared.schemas import RunCreate
from shared.schemas.reports import FailedEvent


@pytest.mark.parametrize(
    "message",
    [
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        "DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
        "ncclRemoteError: a call failed possibly due to a network error",
        "RuntimeError: No CUDA GPUs are available; no CUDA-capable device is detected",
    ],
)
def test_device_and_interconnect_faults_pin_the_host(message: str) -> None:
    assert pins_host(message)


@pytest.mark.parametrize(
    "message",
    [
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 7x8)",
        "RuntimeError: CUDA error: device-side assert triggered",  # the program's bug, not the machine's
        "ValueError: batch_size must be positive",
        "",
    ],
)
def test_program_errors_pin_nothing(message: str) -> None:
    assert not pins_host(message)


def test_a_failed_event_may_name_its_host_and_the_name_is_bounded() -> None:
    assert FailedEvent(seq=1, time=1.0, step=2, error="x", host="vm-1").host == "vm-1"
    assert FailedEvent(seq=1, time=1.0, step=2, error="x").host is None
    with pytest.raises(ValidationError):
        FailedEvent(seq=1, time=1.0, step=2, error="x", host="vm-1\nvm-2")


def _run(**policy: object) -> RunCreate:
    return RunCreate.model_validate(
        {
            "name": "r",
            "training": {
                "dataset": "d.parquet",
                "tokenizer_name_or_path": "tok",
                "batch_size": 4,
                "training_steps": 10,
            },
            "resources": {"scheduler": "slurm", "time_limit": "1m", "nodes": 2},
            "policy": policy,
        }
    )


def test_policy_defaults_and_min_nodes_bounded_by_the_nodes() -> None:
    run = _run()
    assert run.policy.exclude_node_seconds == 6 * 3600 and run.policy.min_nodes is None
    assert _run(min_nodes=1).policy.min_nodes == 1
    with pytest.raises(
        ValidationError, match=r"policy.min_nodes \(3\) must not exceed resources.nodes \(2\)"
    ):
        _run(min_nodes=3)
    with pytest.raises(ValidationError, match="exclude_node_seconds"):
        _run(exclude_node_seconds=-1)
