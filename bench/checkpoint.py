"""Checkpoint throughput: sync DCP, async DCP stall, vanilla torch.save and load vs raw disk bandwidth.

Everything is measured in one run on the same directory, interleaved per repeat (raw write, sync
save, async save, vanilla save, loads), and every timed write is fsynced — a save "counts" only
once it is durable, so the raw baseline is write + fsync of the same byte count. Loads are timed
cold: the checkpoint's pages are dropped from the page cache (posix_fadvise DONTNEED on the
fsynced files) first. Load time includes the checksum verification that precedes every load.

State: worker.model's ``small`` preset with AdamW (moments populated) when that module exists and
reaches the size; otherwise fp32 Linear layers of the same total size (weights + 2 moments).

    python bench/checkpoint.py [--dir DIR] [--size-gb 1.1] [--repeats 3] [--io-threads 1]

Goals: sync save >= 70% of raw bandwidth; async stall <= 10% of the sync save time.
Writes bench/results/checkpoint.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState
from worker.checkpoint.manifest import fsync_dir
from worker.checkpoint.types import CheckpointFormat

RESULTS = Path(__file__).parent / "results" / "checkpoint.json"
_CHUNK = 64 << 20


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (longest mount-point prefix)."""
    real, best, kind = str(path.resolve()), "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                _, mnt, typ, *_ = line.split()
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, typ
    except OSError:
        pass
    return kind


def _populate_adamw(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def build_state(size_gb: float) -> tuple[TrainState, str]:
    target = int(size_gb * 1e9)
    model: nn.Module | None = None
    desc = ""
    try:
        from worker.model import Transformer, model_args  # type: ignore[import-not-found,unused-ignore]

        candidate = Transformer(model_args("small", vocab_size=32000, seq_len=1024))
        if sum(p.numel() for p in candidate.parameters()) * 4 * 3 >= target:
            model, desc = candidate.float(), "worker.model small preset (fp32) + AdamW"
    except (ImportError, AttributeError, TypeError, KeyError):
        pass
    if model is None:
        width = 4096
        layers = math.ceil(target / (width * width * 4 * 3))
        model = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(layers)))
        desc = f"{layers} x Linear({width}, {width}) fp32 + AdamW (worker.model not available)"
    opt = _populate_adamw(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    progress: dict[str, Any] = {"step": 0, "tokens_seen": 0, "data_cursor": {"offset": 0}}
    return TrainState(model=model, optimizer=opt, lr_scheduler=sched, progress=progress), desc


def state_bytes(state: TrainState) -> int:
    n = sum(p.numel() * p.element_size() for p in state.model.parameters())
    for s in state.optimizer.state.values():
        n += sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))
    return n


def raw_write(directory: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` of incompressible data sequentially and make it durable."""
    buf = np.random.default_rng(0).integers(0, 256, _CHUNK, dtype=np.uint8).tobytes()
    path = directory / "raw.bin"
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        left = nbytes
        while left > 0:
            left -= fh.write(buf[: min(left, _CHUNK)])
        os.fsync(fh.fileno())
    fsync_dir(directory)
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def drop_cache(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _manager(
    root: Path, name: str, fmt: CheckpointFormat, *, async_save: bool, io_threads: int
) -> CheckpointManager:
    cfg = CheckpointConfig(
        root=root, run_name=name, format=fmt, async_save=async_save, keep_last_k=2, io_threads=io_threads
    )
    return CheckpointManager(cfg)


def run(directory: Path, *, size_gb: float, repeats: int, io_threads: int) -> dict[str, Any]:
    state, desc = build_state(size_gb)
    nbytes = state_bytes(state)
    print(f"state: {desc}: {nbytes / 1e9:.2f} GB; dir {directory} ({fs_type(directory)})", flush=True)
    sync_m = _manager(directory, "sync", "dcp", async_save=False, io_threads=io_threads)
    async_m = _manager(directory, "async", "dcp", async_save=True, io_threads=io_threads)
    van_m = _manager(directory, "vanilla", "vanilla", async_save=False, io_threads=io_threads)

    # Warm-up async save: allocates the CPU staging buffers that every later async save reuses.
    async_m.save(0, state)
    first = async_m.wait()[0]
    times: dict[str, list[float]] = {
        k: [] for k in ("raw", "sync", "stall", "async", "vanilla", "load", "vload")
    }
    ckpt_bytes = 0
    for i in range(1, repeats + 1):
        state.progress["step"] = i
        times["raw"].append(raw_write(directory, nbytes))
        r = sync_m.save(i, state)
        assert r is not None
        ckpt_bytes = r.size_bytes
        times["sync"].append(r.save_seconds)
        t0 = time.perf_counter()
        async_m.save(i, state)
        times["stall"].append(time.perf_counter() - t0)
        times["async"].append(async_m.wait()[0].save_seconds)
        v = van_m.save(i, state)
        assert v is not None
        times["vanilla"].append(v.save_seconds)
        for name, m, key in (("sync", sync_m, "load"), ("vanilla", van_m, "vload")):
            drop_cache(directory / name / f"step-{i}")
            res = m.restore(state, directory / name / f"step-{i}")
            assert res is not None
            times[key].append(res.load_seconds)
        print(f"  repeat {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    for m in (sync_m, async_m, van_m):
        m.close()

    med = {k: statistics.median(v) for k, v in times.items()}
    raw_bw = nbytes / med["raw"]
    return {
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "state": desc,
        "state_bytes": nbytes,
        "checkpoint_bytes": ckpt_bytes,
        "dir_fs_type": fs_type(directory),
        "repeats": repeats,
        "io_threads": io_threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "seconds_median": med,
        "seconds_all": times,
        "async_first_stall_seconds": first.stall_seconds,
        "bandwidth_gb_s": {
            "raw_write": raw_bw / 1e9,
            "sync_dcp_save": ckpt_bytes / med["sync"] / 1e9,
            "vanilla_save": nbytes / med["vanilla"] / 1e9,
        },
        "ratios": {
            "sync_save_over_raw_bandwidth": (ckpt_bytes / med["sync"]) / raw_bw,
            "async_stall_over_sync_save": med["stall"] / med["sync"],
            "vanilla_save_over_raw_bandwidth": (nbytes / med["vanilla"]) / raw_bw,
        },
        "goals": {"sync_save_over_raw_bandwidth": ">= 0.70", "async_stall_over_sync_save": "<= 0.10"},
    }


def report(res: dict[str, Any]) -> None:
    med, gb = res["seconds_median"], res["checkpoint_bytes"] / 1e9
    rows = [
        ("raw write + fsync (same bytes)", med["raw"]),
        ("sync DCP save (incl. checksum + commit)", med["sync"]),
        ("async DCP: caller stall", med["stall"]),
        ("async DCP: total until committed", med["async"]),
        ("vanilla torch.save (incl. commit)", med["vanilla"]),
        ("DCP load, cold cache (incl. verify)", med["load"]),
        ("vanilla load, cold cache (incl. verify)", med["vload"]),
    ]
    print(
        f"\nstate {res['state_bytes'] / 1e9:.2f} GB, DCP checkpoint {gb:.2f} GB, medians of {res['repeats']}"
    )
    for name, sec in rows:
        print(f"  {name:42} {sec:7.2f} s")
    print(f"  {'async stall of the first save (allocates)':42} {res['async_first_stall_seconds']:7.2f} s")
    r = res["ratios"]
    print(f"\nsync save / raw bandwidth : {r['sync_save_over_raw_bandwidth']:.0%} (goal >= 70%)")
    print(f"async stall / sync save   : {r['async_stall_over_sync_save']:.0%} (goal <= 10%)")
    print(f"vanilla / raw bandwidth   : {r['vanilla_save_over_raw_bandwidth']:.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dir", type=Path, help="where to write (default: a temp dir under the cwd, removed after)"
    )
    p.add_argument("--size-gb", type=float, default=1.1, help="state size: weights + AdamW moments (GB)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--io-threads", type=int, default=1, help="DCP writer threads per rank")
    p.add_argument("--allow-tmpfs", action="store_true", help="measure even if --dir is in memory")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    owned = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix=".bench-checkpoint-", dir=Path.cwd())) if owned else args.dir
    directory.mkdir(parents=True, exist_ok=True)
    if fs_type(directory) in ("tmpfs", "ramfs") and not args.allow_tmpfs:
        print(
            f"{directory} is on {fs_type(directory)} (memory, not disk); pass another --dir", file=sys.stderr
        )
        return 2
    try:
        res = run(directory, size_gb=args.size_gb, repeats=args.repeats, io_threads=args.io_threads)
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
    report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
