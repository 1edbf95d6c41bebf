"""Why a host joins a run's exclusion list, and which worker failures name their host.

The controller keeps a run's next attempts off a host (``sbatch --exclude``) after a fault that
points at the machine rather than at the run: the scheduler declared the node failed, a hang
watchdog named the host of a stalled rank, or the worker failed with a device or interconnect
error it pins on its own host. A program error (a bad shape, a device-side assert) names no host:
excluding the machine would not help and would shrink the pool for nothing.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ExclusionReason(StrEnum):
    NODE_FAIL = "node_fail"
    """The scheduler ended the attempt NODE_FAIL; the job's nodes the scheduler marks down."""
    HUNG = "hung"
    """A ``hung`` event named the host of a suspect rank."""
    WORKER_PINNED = "worker_pinned"
    """A ``failed`` event carried ``host``: a CUDA/NCCL fault of that machine."""


DEVICE_FAULT_RE = re.compile(
    r"uncorrectable ECC|cudaErrorECCUncorrectable|unspecified launch failure|an illegal memory access"
    r"|no CUDA-capable device|CUDA-capable device\(s\) is/are busy|GPU is lost|Xid \d+"
    r"|NCCL error|ncclSystemError|ncclInternalError|ncclUnhandledCudaError|ncclRemoteError",
)
"""Failure messages that point at the machine (its GPU or its interconnect), not at the program."""


def pins_host(message: str) -> bool:
    """Whether a failure message names a fault of the host it happened on (``DEVICE_FAULT_RE``)."""
    return DEVICE_FAULT_RE.search(message) is not None
