"""Measuring one rank's training step: time, tensor memory and RSS, through the worker's own step code.

Used by ``bench/memory_plan.py`` and ``bench/fsdp.py``; each measurement runs in a fresh process
(``python bench/step_memory.py CONFIG_JSON``, one per rank under ``torchrun``-style environment
variables) and prints one JSON line. What is measured, after one warm-up step (AdamW's moments
exist from then on):

- ``step_s``: wall time of each timed step (``TrainingLoop._train_step``: micro-batches, clipping,
  the optimizer step);
- ``tensor_peak``: the peak of live tensor storage bytes during one more step, by torch's
  ``MemTracker`` (a dispatch mode that sees every storage allocated and freed, with the
  parameters, gradients and optimizer state registered up front). Tensors allocated before the
  tracker starts and not registered with it (DDP's gradient buckets) are not seen;
- ``rss_growth``: the process's peak RSS during the timed steps minus its RSS just before them
  (``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``): what the step
  adds on top of the resident parameters and optimizer state. The child runs with a fixed glibc
  mmap threshold, so freed tensors go back to the system and the next step's growth shows;
- ``local_state``: bytes of this rank's parameters and AdamW moments (its shards under FSDP).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# Allocations above 128 KiB are mmap'd and unmapped on free: RSS follows the live tensors.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _loop(config: Any, info: Any) -> tuple[Any, Any]:
    """The worker's components and step loop for ``config``, warmed up by one step; and its batches."""
    from worker.components import build_components
    from worker.loop import TrainingLoop
    from worker.reporting import NullReporter

    comp = build_components(config, info)
    state = SimpleNamespace(progress={"step": 0, "tokens_seen": 0})
    loop = TrainingLoop(
        config=config,
        info=info,
        comp=comp,
        manager=None,
        state=state,
        reporter=NullReporter(),
        clock=time.time,
    )
    comp.model.train()
    batches = iter(comp.dataset)
    loop._train_step(*next(batches))
    return loop, batches


def alternate(spec: dict[str, Any]) -> dict[str, Any]:
    """One rank: the same config under each of ``spec["parallelisms"]`` in this process, timed step by
    step in alternation (who goes first alternates too), so background load hits all alike."""
    from worker.config import TrainConfig
    from worker.distributed import destroy_process_groups, init_distributed

    names = spec["parallelisms"]
    info = init_distributed(group_of_one=True)
    loops = {name: _loop(TrainConfig(**{**spec["config"], "parallelism": name}), info) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(spec["timed_steps"]):
        for name in names if i % 2 == 0 else reversed(names):
            loop, batches = loops[name]
            batch = next(batches)
            started = time.perf_counter()
            loop._train_step(*batch)
            times[name].append(time.perf_counter() - started)
    destroy_process_groups(info)
    return {"rank": info.rank, "step_s": times}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One rank: build the worker's components for ``spec["config"]``, warm up, time, measure."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from worker.config import TrainConfig
    from worker.distributed import destroy_process_groups, init_distributed
    from worker.parallel import local_state_bytes

    if "parallelisms" in spec:
        return alternate(spec)
    config = TrainConfig(**spec["config"])
    info = init_distributed(group_of_one=config.parallelism == "fsdp")
    loop, batches = _loop(config, info)
    comp = loop.comp
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5\n")  # reset VmHWM to the current RSS
    times = []
    for _ in range(spec.get("timed_steps", 1)):
        batch = next(batches)
        started = time.perf_counter()
        loop._train_step(*batch)
        times.append(time.perf_counter() - started)
    rss_growth = (_status_kib("VmHWM") - rss_before) * 1024

    tracker = MemTracker()
    tracker.track_external(comp.model, comp.optimizer)
    forward = loop._forward_loss

    def fresh_module_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tracker.reset_mod_stats()  # MemTracker refuses a second forward of the root otherwise
        return forward(x, y)

    loop._forward_loss = fresh_module_stats  # type: ignore[method-assign]
    batch = next(batches)
    with tracker:
        loop._train_step(*batch)
    snapshot = tracker.get_tracker_snapshot("peak")[info.device]
    result = {
        "rank": info.rank,
        "world_size": info.world_size,
        "step_s": times,
        "tokens_per_step": config.batch_size * config.sequence_length,
        "tensor_peak": int(snapshot["Total"]),
        "tensor_peak_by_kind": {
            str(getattr(k, "value", k)): int(v) for k, v in snapshot.items() if k != "Total"
        },
        "rss_before": rss_before * 1024,
        "rss_growth": rss_growth,
        "local_state": local_state_bytes(comp.model, comp.optimizer),
    }
    destroy_process_groups(info)
    return result


def run(
    config: dict[str, Any],
    *,
    world_size: int = 1,
    timed_steps: int = 1,
    parallelisms: list[str] | None = None,
    timeout: float = 3600,
) -> list[dict]:
    """Measure ``config`` (TrainConfig fields) in fresh processes, one per rank; results by rank.
    With ``parallelisms``: only step times, of each parallelism in alternation (``alternate``)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = json.dumps(
        {
            "config": config,
            "timed_steps": timed_steps,
            **({"parallelisms": parallelisms} if parallelisms else {}),
        }
    )
    procs = []
    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-step-") as tmp:
        for rank in range(world_size):
            env = {**os.environ, **CHILD_ENV}
            env.pop("PYRECOVER_CONTROLLER_URL", None)
            if world_size > 1:
                env |= {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
            err = open(Path(tmp) / f"rank{rank}.err", "w")  # noqa: SIM115 (closed below)
            cmd = [sys.executable, __file__, spec]
            procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True), err))
        results = []
        for rank, (proc, err) in enumerate(procs):
            out, _ = proc.communicate(timeout=timeout)
            err.close()
            if proc.returncode != 0:
                raise RuntimeError(
                    f"rank {rank} failed:\n{(Path(tmp) / f'rank{rank}.err').read_text()[-3000:]}"
                )
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def median_step_s(results: list[dict[str, Any]]) -> float:
    """The slowest rank's median step (every rank waits for it in the collectives)."""
    return max(statistics.median(r["step_s"]) for r in results)


def sample_data(directory: Path) -> tuple[Path, Path]:
    from worker.data.prepare import ensure_sample_data

    return ensure_sample_data(directory)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
