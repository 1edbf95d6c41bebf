"""FSDP2 against DDP on 2 CPU ranks (gloo): tokens/s, peak memory per rank, and the state each holds.

The same run (the ``small`` preset with the sample tokenizer's vocabulary, fp32, a global batch of
4 × 256 tokens) trains under ``--parallelism ddp`` and ``fsdp`` through the worker's own step code
(``bench/step_memory.py`` says how each figure is measured):

- tokens/s: global tokens per step / the slowest rank's median step time. Both are timed in one
  pair of processes that holds both models and alternates their steps (and which goes first), so
  background load hits both alike;
- parameters + AdamW moments this rank holds (its shards under FSDP): the goal is FSDP ≈ DDP / 2;
- the peak of live tensor bytes during a step, and the peak RSS, per rank;
- the memory plan's peak for the same configuration (CPU policy).
The memory figures come from a separate pair of fresh processes per parallelism.

    python bench/fsdp.py [--steps 6] [--preset small] [--quick]

Writes bench/results/fsdp.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import step_memory  # bench/step_memory.py (this directory is sys.path[0])

from shared.memory_plan import PlanInputs, plan_memory
from worker.config import TrainConfig

RESULTS = Path(__file__).parent / "results" / "fsdp.json"
MB = 1e6
WORLD = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=4, help="global, in sequences")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each parallelism")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.preset, opts.steps = "tiny", 2

    from worker.data import load_tokenizer

    memory: dict[str, list[dict[str, Any]]] = {}
    plans: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-fsdp-") as tmp:
        parquet, tokenizer = step_memory.sample_data(Path(tmp) / "data")
        vocab = len(load_tokenizer(str(tokenizer)))
        fields = {
            "dataset": str(parquet),
            "tokenizer_name_or_path": str(tokenizer),
            "model_preset": opts.preset,
            "batch_size": opts.batch_size,
            "sequence_length": opts.seq_len,
            "model_dtype": "fp32",
            "timeaware_checkpointing": False,
            "checkpoint_dir": str(Path(tmp) / "ckpt"),
        }
        for parallelism in ("ddp", "fsdp"):
            memory[parallelism] = step_memory.run({**fields, "parallelism": parallelism}, world_size=WORLD)
            config = TrainConfig(**fields, parallelism=parallelism)
            plans[parallelism] = plan_memory(
                PlanInputs.from_training(config, world_size=WORLD, on_gpu=False, vocab_size=vocab)
            )
            print(f"  {parallelism}: memory measured", file=sys.stderr)
        timing = step_memory.run(
            fields, world_size=WORLD, timed_steps=opts.steps, parallelisms=["ddp", "fsdp"]
        )

    summary: dict[str, dict[str, Any]] = {}
    for parallelism, ranks in memory.items():
        step = max(statistics.median(r["step_s"][parallelism]) for r in timing)
        summary[parallelism] = {
            "median_step_s": step,
            "step_s_by_rank": [r["step_s"][parallelism] for r in timing],
            "tokens_per_s": opts.batch_size * opts.seq_len / step,
            "state_bytes_per_rank": max(
                r["local_state"]["parameters"] + r["local_state"]["optimizer"] for r in ranks
            ),
            "tensor_peak_per_rank": max(r["tensor_peak"] for r in ranks),
            "tensor_peak_by_kind_rank0": ranks[0]["tensor_peak_by_kind"],
            "peak_rss_per_rank": max(r["rss_before"] + r["rss_growth"] for r in ranks),
            "plan_peak_per_rank": plans[parallelism].peak,
            "plan_phases": plans[parallelism].phases,
        }
    ddp, fsdp = summary["ddp"], summary["fsdp"]
    speed = fsdp["tokens_per_s"] / ddp["tokens_per_s"]
    state_ratio = fsdp["state_bytes_per_rank"] / ddp["state_bytes_per_rank"]
    record = {
        "bench": "fsdp",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg()[0],
        "config": {
            "preset": opts.preset,
            "vocab_size": vocab,
            "world_size": WORLD,
            "batch_size": opts.batch_size,
            "seq_len": opts.seq_len,
            "dtype": "fp32",
            "timed_steps": opts.steps,
        },
        "results": summary,
        "tokens_per_s_fsdp_over_ddp": speed,
        "state_bytes_fsdp_over_ddp": state_ratio,
        "goal": "FSDP's parameters + optimizer state per rank about 1/world of DDP's",
        "goal_met": abs(state_ratio - 1 / WORLD) <= 0.05,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2) + "\n")

    shape = f"global batch {opts.batch_size} x {opts.seq_len}"
    timing = f"{opts.steps} alternated timed steps each; memory from one fresh run of each"
    print(f"\nFSDP vs DDP: preset {opts.preset} (vocab {vocab}), {WORLD} CPU ranks (gloo), fp32, {shape},")
    print(f"  {timing}")
    head = ("", "tokens/s", "params+optim MB", "tensor peak MB", "peak RSS MB", "plan MB")
    print("".join(f"{h:>17}" for h in head))
    for name, r in summary.items():
        cells = (name, f"{r['tokens_per_s']:.1f}", f"{r['state_bytes_per_rank'] / MB:.1f}",
                 f"{r['tensor_peak_per_rank'] / MB:.1f}", f"{r['peak_rss_per_rank'] / MB:.1f}",
                 f"{r['plan_peak_per_rank'] / MB:.1f}")  # fmt: skip
        print("".join(f"{c:>17}" for c in cells))
    print(f"tokens/s FSDP / DDP: {speed:.3f} (steps alternated in the same processes)")
    print(f"parameters + optimizer per rank FSDP / DDP: {state_ratio:.3f} (goal about 1/{WORLD}: "
          f"{'met' if record['goal_met'] else 'MISSED'})")  # fmt: skip
    tensor_ratio = fsdp["tensor_peak_per_rank"] / ddp["tensor_peak_per_rank"]
    rss_ratio = fsdp["peak_rss_per_rank"] / ddp["peak_rss_per_rank"]
    print(f"tensor peak per rank FSDP / DDP: {tensor_ratio:.3f}; peak RSS FSDP / DDP: {rss_ratio:.3f}")
    print(f"wrote {opts.out}")
    return 0 if record["goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
