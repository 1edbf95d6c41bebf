"""Process-group setup for DDP under torchrun or SLURM (srun), and the few collectives the loop needs.

Rank, world size and local rank come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) or,
failing those, from SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). A single process needs no
process group at all; every helper here then degrades to the local value.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger("pyrecover.worker")

# MASTER_PORT derived from SLURM_JOB_ID lands in [_PORT_BASE, _PORT_BASE + _PORT_SPAN): unprivileged,
# below the Linux ephemeral range (32768+), so two jobs sharing a node rarely collide.
_PORT_BASE = 15000
_PORT_SPAN = 15000


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """'gloo' or 'nccl' when a process group was created; None for a single process."""

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list such as ``node[01-03,07],gpu5`` into host names.

    Handles one bracket group per host expression (what SLURM produces for flat clusters) with
    zero-padded ranges; ``scontrol show hostnames`` is preferred when it is installed.
    """
    hosts: list[str] = []
    for expr in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", expr)
        if not m:
            hosts.append(expr)
            continue
        prefix, ranges, suffix = m.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (rank 0 runs there)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            log.warning("scontrol show hostnames failed; expanding %r myself", nodelist)
    return expand_nodelist(nodelist)[0]


def port_for_job(job_id: str) -> int:
    """A rendezvous port derived from the job id, so concurrent jobs do not share a fixed port."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return _PORT_BASE + int(digits) % _PORT_SPAN


def resolve_env(env: Mapping[str, str]) -> tuple[int, int, int, dict[str, str]]:
    """(rank, world_size, local_rank, extra environment for init_process_group) from torchrun or SLURM."""
    extra: dict[str, str] = {}
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
    else:
        return 0, 1, 0, extra
    if world > 1:
        if "MASTER_ADDR" not in env:
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            extra["MASTER_ADDR"] = first_host(nodelist) if nodelist else "127.0.0.1"
        if "MASTER_PORT" not in env:
            job_id = env.get("SLURM_JOB_ID")
            if job_id is None:
                raise RuntimeError(
                    "MASTER_PORT is not set and there is no SLURM_JOB_ID to derive one from; "
                    "launch with torchrun or export MASTER_PORT"
                )
            extra["MASTER_PORT"] = str(port_for_job(job_id))
    return rank, world, local, extra


def init_distributed(timeout_s: float = 600.0, *, group_of_one: bool = False) -> DistInfo:
    """Create the process group (gloo on CPU, NCCL on GPU) and pick this rank's device.

    A single process gets no process group, unless ``group_of_one``: FSDP shards over a device mesh
    even with one rank, so ``parallelism: fsdp`` asks for a group of one, rendezvousing through an
    in-process store (no port, no environment needed).
    """
    rank, world, local, extra = resolve_env(os.environ)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if world == 1:
        if not group_of_one:
            return DistInfo(rank=0, world_size=1, local_rank=0, device=device, backend=None)
        from torch._C._distributed_c10d import HashStore  # torch.distributed re-exports it untyped

        dist.init_process_group(
            backend=backend,
            store=HashStore(),
            rank=0,
            world_size=1,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
        )
        return DistInfo(rank=0, world_size=1, local_rank=local, device=device, backend=backend)
    os.environ.update(extra)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if use_cuda else None,
    )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, backend=backend)


def destroy_process_groups(info: DistInfo) -> None:
    """Destroy every process group: the default one and the subgroups created after it, such as
    the checkpoint manager's async-save group (safe to call twice, or after a failed init).

    Local, no collective; ``worker.shutdown.teardown`` calls it after an exit barrier, bounded.
    """
    if info.is_distributed and dist.is_initialized():
        # With no argument, destroy_process_group shuts down every group, newest first.
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few float64 scalars over all ranks with one collective."""
    if not info.is_distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) for x in t.tolist()]


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def log_rank0(info: DistInfo, msg: str, *args: object, level: int = logging.INFO) -> None:
    """Log on rank 0 only (the others would print the same line world_size times)."""
    if info.is_main:
        log.log(level, msg, *args)


def log_rank(info: DistInfo, msg: str, *args: object, level: int = logging.INFO) -> None:
    """Log on every rank, prefixed with the rank."""
    log.log(level, "[rank %d] " + msg, info.rank, *args)
