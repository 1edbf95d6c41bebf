"""A tiny model + AdamW + LambdaLR to checkpoint, and the comparisons the tests share."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState


class Tiny(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make_state(seed: int = 0, wrap: str | None = None, hidden: int = 16) -> TrainState:
    """A TrainState around a fresh Tiny model; ``wrap``: None, "ddp" or "compile-prefix" (``_orig_mod``)."""
    torch.manual_seed(seed)
    model: nn.Module = Tiny(hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif wrap == "compile":
        model = torch.compile(model)  # only the wrapper (its ``_orig_mod.`` prefix); never run here
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    progress: dict[str, Any] = {"step": 0, "tokens_seen": 0, "data_cursor": {"offset": 0}}
    return TrainState(model=model, optimizer=opt, lr_scheduler=sched, progress=progress)


def train(state: TrainState, steps: int, seed: int = 1) -> None:
    """A few real optimizer steps so the AdamW moments are non-zero; consumes every RNG."""
    gen = torch.Generator().manual_seed(seed + state.progress["step"])
    for _ in range(steps):
        x = torch.randn(4, 8, generator=gen)
        loss = state.model(x).pow(2).mean() + 0 * torch.rand(1).sum()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.lr_scheduler.step()
        random.random()
        np.random.rand()
        state.progress["step"] += 1
        state.progress["tokens_seen"] += 32
        state.progress["data_cursor"] = {"offset": state.progress["step"] * 4}


def plain_params(state: TrainState) -> dict[str, torch.Tensor]:
    model = state.model
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def moments(state: TrainState) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    out = []
    for group in state.optimizer.param_groups:
        for p in group["params"]:
            s = state.optimizer.state[p]
            out.append((s["exp_avg"].clone(), s["exp_avg_sq"].clone(), float(s["step"])))
    return out


def manager(root: Path, **kw: Any) -> CheckpointManager:
    ckw = {k: kw.pop(k) for k in list(kw) if k in ("format", "async_save", "keep_last_k", "keep_every_n")}
    return CheckpointManager(CheckpointConfig(root=root, run_name="run", **ckw), **kw)


def rng_draws() -> tuple[float, float, float]:
    """One draw from each generator a checkpoint restores (python, numpy, torch CPU)."""
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def snapshot(state: TrainState) -> dict[str, Any]:
    """Plain, picklable copies of everything a resume must bring back."""
    return {
        "params": plain_params(state),
        "moments": moments(state),
        "scheduler": state.lr_scheduler.state_dict(),
        "progress": dict(state.progress),
    }


def assert_same_training_state(a: TrainState | dict[str, Any], b: TrainState | dict[str, Any]) -> None:
    sa = a if isinstance(a, dict) else snapshot(a)
    sb = b if isinstance(b, dict) else snapshot(b)
    assert sa["params"].keys() == sb["params"].keys()
    for k in sa["params"]:
        assert torch.equal(sa["params"][k], sb["params"][k]), k
    ma, mb = sa["moments"], sb["moments"]
    assert len(ma) == len(mb) > 0
    for (avg_a, sq_a, step_a), (avg_b, sq_b, step_b) in zip(ma, mb, strict=True):
        assert avg_a.abs().sum() > 0 and sq_a.abs().sum() > 0, "moments must be real (non-zero)"
        assert torch.equal(avg_a, avg_b) and torch.equal(sq_a, sq_b) and step_a == step_b
    assert sa["scheduler"] == sb["scheduler"]
    assert sa["progress"] == sb["progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_entry(fn: Callable[..., None], rank: int, world: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        # Leave together: a rank that tears gloo down while its peer is still mid-collective makes
        # the peer abort ("terminate called without an active exception") although all work passed.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., None], world: int, *args: Any, timeout: float = 180) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes joined by a gloo group."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_rank_entry, args=(fn, r, world, port, args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"rank exit codes {codes} (tracebacks above in the captured stderr)"
