"""One-GPU check of the training step: llama3-1b in bf16 under DDP and FSDP2, with and without
activation checkpointing: tokens/s, MFU, the SDPA kernel, and the memory plan against the peak.

Prepared for a machine with one CUDA GPU; nothing in the test suite depends on it. One command,
bounded in time (``--budget-s``, default 480 s: configurations that would start after it are
skipped and say so):

    python bench/gpu_check.py [--budget-s 480] [--batch-size 4] [--seq-len 2048] [--compile]

Per configuration, in one process (a process group of one, as ``--parallelism fsdp`` makes):
the worker's own components (``worker.parallel.parallelize``, ``worker.precision``, fused AdamW)
and its step (``TrainingLoop._train_step``) on random tokens of Llama 3's vocabulary (128,256);
``--warmup`` steps, then ``--steps`` timed ones (CUDA-synchronised); the peak of
``torch.cuda.max_memory_allocated`` over the timed steps against ``shared.memory_plan``'s peak
for the same configuration. MFU is per device: tokens/s × training FLOPs per token
(``worker.metrics.flops_per_token``) / the device's dense bf16 peak. The SDPA kernel is read
off the profiler's op names for one forward pass.

Goal (issue): MFU >= 45 % for llama3-1b bf16. Writes bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from shared.memory_plan import PlanInputs, plan_memory
from worker.components import Components
from worker.config import TrainConfig
from worker.distributed import DistInfo, destroy_process_groups, init_distributed
from worker.loop import TrainingLoop
from worker.lr import build_lr_scheduler
from worker.metrics import flops_per_token, mfu, num_params, peak_flops
from worker.model import Transformer, model_args
from worker.parallel import parallelize
from worker.precision import default_dtype, resolve_precision
from worker.reporting import NullReporter

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
GIB = 1024**3
PRESET, VOCAB = "llama3-1b", 128_256
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def build(config: TrainConfig, info: DistInfo) -> Components:
    """``worker.components.build_components`` without the data: same model, precision, wrapping,
    optimizer and schedule."""
    torch.manual_seed(config.seed)
    args = model_args(config.model_preset, vocab_size=VOCAB, seq_len=config.sequence_length)
    precision = resolve_precision(
        config.model_dtype, mixed=config.mixed_precision, device=info.device, parallelism=config.parallelism
    )
    with default_dtype(precision.param_dtype):
        base = Transformer(args)
        base.init_weights()
    base.activation_checkpointing = config.activation_checkpointing
    n = num_params(base)
    fpt = flops_per_token(args, num_params(base, exclude_embedding=True))
    model = parallelize(
        base, parallelism=config.parallelism, info=info, precision=precision, compile=config.compile
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.peak_learning_rate, fused=config.fused_optimizer
    )
    scheduler = build_lr_scheduler(optimizer, schedule="constant", warmup_steps=0, training_steps=10**6)
    return Components(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=None,
        precision=precision,
        grad_scaler=None,
        flops_per_token=float(fpt),
        num_params=n,
        peak_flops=peak_flops(info.device, precision.compute_dtype),
    )


def sdpa_kernel(model: torch.nn.Module, batch: torch.Tensor) -> str:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(batch)
    names = {e.name for e in prof.events()}
    found = [label for op, label in SDPA_OPS.items() if op in names]
    return ", ".join(found) or "unknown (no SDPA op seen)"


def run_config(name: str, fields: dict[str, Any], info: DistInfo, opts: argparse.Namespace) -> dict[str, Any]:
    config = TrainConfig(**fields)
    comp = build(config, info)
    loop = TrainingLoop(
        config=config,
        info=info,
        comp=comp,
        manager=None,
        state=SimpleNamespace(progress={"step": 0, "tokens_seen": 0}),
        reporter=NullReporter(),
        clock=time.time,
    )
    comp.model.train()
    gen = torch.Generator(device="cpu").manual_seed(1)
    local = config.batch_size

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, VOCAB, (local, config.sequence_length + 1), generator=gen)
        return ids[:, :-1].to(info.device), ids[:, 1:].to(info.device)

    kernel = sdpa_kernel(comp.model, batch()[0][:1])
    for _ in range(opts.warmup):
        loop._train_step(*batch())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(opts.steps):
        inputs, labels = batch()
        torch.cuda.synchronize()
        started = time.perf_counter()
        loop._train_step(inputs, labels)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated()
    step = statistics.median(times)
    tokens_per_s = local * config.sequence_length / step
    plan = plan_memory(PlanInputs.from_training(config, world_size=1, on_gpu=True, vocab_size=VOCAB))
    result = {
        "name": name,
        "config": {
            "parallelism": config.parallelism,
            "activation_checkpointing": config.activation_checkpointing,
            "batch_size": config.batch_size,
            "sequence_length": config.sequence_length,
        },
        "sdpa_kernel": kernel,
        "median_step_s": step,
        "step_times_s": times,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, comp.flops_per_token, comp.peak_flops) if comp.peak_flops else None,
        "measured_peak_bytes": peak,
        "plan_peak_bytes": plan.peak,
        "plan_phases": plan.phases,
        "plan_over_measured": plan.peak / peak,
    }
    del loop, comp
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (one GPU)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile (adds minutes of compilation)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no configuration after this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; this script is for a machine with a GPU", file=sys.stderr)
        return 2
    started = time.monotonic()
    torch.backends.cuda.matmul.allow_tf32 = True
    info = init_distributed(group_of_one=True)  # FSDP shards over a mesh even with one rank
    base = {
        "dataset": "unused", "tokenizer_name_or_path": "unused", "model_preset": PRESET,
        "batch_size": opts.batch_size, "sequence_length": opts.seq_len, "model_dtype": "bf16",
        "mixed_precision": True, "fused_optimizer": True, "compile": opts.compile,
        "timeaware_checkpointing": False, "checkpoint_dir": "/tmp/pyrecover-gpu-check",
    }  # fmt: skip
    configs = [
        ("ddp", {"parallelism": "ddp"}),
        ("fsdp", {"parallelism": "fsdp"}),
        ("ddp + checkpointing", {"parallelism": "ddp", "activation_checkpointing": True}),
        ("fsdp + checkpointing", {"parallelism": "fsdp", "activation_checkpointing": True}),
    ]
    results, skipped = [], []
    for name, extra in configs:
        if time.monotonic() - started > opts.budget_s:
            skipped.append(name)
            continue
        print(f"--- {name}", file=sys.stderr, flush=True)
        results.append(run_config(name, base | extra, info, opts))
    destroy_process_groups(info)
    record = {
        "bench": "gpu_check",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(info.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "preset": PRESET,
        "vocab_size": VOCAB,
        "results": results,
        "skipped_for_time": skipped,
        "seconds": time.monotonic() - started,
        "goal": "MFU >= 45 % (llama3-1b, bf16, one GPU)",
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{PRESET} bf16 on one {record['device']}, {opts.batch_size} x {opts.seq_len} tokens per step")
    head = ("config", "tokens/s", "MFU", "SDPA", "peak GiB", "plan GiB", "plan/peak")
    print("".join(f"{h:>22}" for h in head))
    for r in results:
        cells = (
            r["name"],
            f"{r['tokens_per_s']:.0f}",
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
            r["sdpa_kernel"],
            f"{r['measured_peak_bytes'] / GIB:.2f}",
            f"{r['plan_peak_bytes'] / GIB:.2f}",
            f"{r['plan_over_measured']:.3f}",
        )
        print("".join(f"{c:>22}" for c in cells))
    by_name = {r["name"]: r for r in results}
    if "ddp" in by_name and "fsdp" in by_name:
        print(f"tokens/s FSDP2 / DDP: {by_name['fsdp']['tokens_per_s'] / by_name['ddp']['tokens_per_s']:.3f}")
    if skipped:
        print(f"skipped (time budget {opts.budget_s:.0f} s): {', '.join(skipped)}")
    print(f"wrote {opts.out} after {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
