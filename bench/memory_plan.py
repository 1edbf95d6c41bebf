"""The memory plan against measured peaks: tiny and small presets on this CPU, one rank.

For each configuration a fresh process builds the worker's components and measures one training
step after a warm-up step (``bench/step_memory.py`` says exactly what): the peak of live tensor
bytes (torch's MemTracker) and the RSS the step adds. The plan (``shared/memory_plan.py``, the CPU
policy: fp32, the tokenizer's real vocabulary) is compared with both:

- plan peak vs tensor peak: the same quantity, what the plan claims to estimate;
- plan peak minus the resident state (parameters + AdamW moments, present before the step) vs the
  RSS growth during the step: a cross-check with the operating system's view.

    python bench/memory_plan.py [--quick]

Goal: the plan within ±20 % of the measured tensor peak for every configuration. Writes
bench/results/memory_plan.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import step_memory  # bench/step_memory.py (this directory is sys.path[0])

from shared.memory_plan import PlanInputs, plan_memory
from worker.config import TrainConfig

RESULTS = Path(__file__).parent / "results" / "memory_plan.json"
MIB = 1024**2

# (preset, global batch, sequence length, activation checkpointing, accumulation)
CASES = [
    ("tiny", 8, 256, False, 1),
    ("tiny", 8, 256, True, 1),
    ("tiny", 8, 256, False, 4),
    ("small", 4, 256, False, 1),
    ("small", 4, 256, True, 1),
    ("small", 8, 512, True, 2),
]
QUICK = [CASES[0], CASES[3]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="two configurations only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)

    from worker.data import load_tokenizer

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pyrecover-bench-plan-") as tmp:
        parquet, tokenizer = step_memory.sample_data(Path(tmp) / "data")
        vocab = len(load_tokenizer(str(tokenizer)))
        for preset, batch, seq, ckpt, accumulation in QUICK if opts.quick else CASES:
            fields = {
                "dataset": str(parquet), "tokenizer_name_or_path": str(tokenizer), "model_preset": preset,
                "batch_size": batch, "sequence_length": seq, "activation_checkpointing": ckpt,
                "gradient_accumulation_steps": accumulation, "model_dtype": "fp32",
                "timeaware_checkpointing": False, "checkpoint_dir": str(Path(tmp) / "ckpt"),
            }  # fmt: skip
            (measured,) = step_memory.run(fields, timed_steps=1)
            plan = plan_memory(
                PlanInputs.from_training(TrainConfig(**fields), world_size=1, on_gpu=False, vocab_size=vocab)
            )
            resident = plan.parameters + plan.optimizer
            row = {
                "preset": preset, "batch": batch, "seq_len": seq, "activation_checkpointing": ckpt,
                "accumulation": accumulation, "vocab_size": vocab,
                "plan_peak": plan.peak, "plan_peak_phase": plan.peak_phase, "plan_phases": plan.phases,
                "plan_activations": plan.activations, "tensor_peak": measured["tensor_peak"],
                "tensor_peak_by_kind": measured["tensor_peak_by_kind"],
                "plan_over_tensor_peak": plan.peak / measured["tensor_peak"],
                "plan_step_growth": plan.peak - resident, "rss_growth": measured["rss_growth"],
                "plan_over_rss_growth": (plan.peak - resident) / max(measured["rss_growth"], 1),
                "step_s": measured["step_s"],
            }  # fmt: skip
            rows.append(row)
            label = f"{preset} {batch}x{seq} ckpt={ckpt} accum={accumulation}"
            peaks = f"plan {plan.peak / MIB:.1f} MiB, measured {measured['tensor_peak'] / MIB:.1f} MiB"
            print(f"  {label}: {peaks} ({row['plan_over_tensor_peak']:.3f})", file=sys.stderr)
    worst = max(abs(r["plan_over_tensor_peak"] - 1) for r in rows)
    record = {
        "bench": "memory_plan",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg()[0],
        "results": rows,
        "worst_relative_error": worst,
        "goal": "plan within ±20 % of the measured tensor peak",
        "goal_met": worst <= 0.2,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\nmemory plan vs measured peak, CPU fp32, one rank, vocab {rows[0]['vocab_size']}")
    head = ("preset", "batch x seq", "ckpt", "accum", "plan MiB", "tensor MiB", "ratio")
    print("".join(f"{h:>12}" for h in (*head, "plan growth", "RSS growth", "ratio")))
    for r in rows:
        cells = (
            r["preset"],
            f"{r['batch']}x{r['seq_len']}",
            "yes" if r["activation_checkpointing"] else "no",
            r["accumulation"],
            f"{r['plan_peak'] / MIB:.1f}",
            f"{r['tensor_peak'] / MIB:.1f}",
            f"{r['plan_over_tensor_peak']:.3f}",
            f"{r['plan_step_growth'] / MIB:.1f}",
            f"{r['rss_growth'] / MIB:.1f}",
            f"{r['plan_over_rss_growth']:.3f}",
        )
        print("".join(f"{c:>12}" for c in cells))
    print(
        f"worst |plan / tensor peak - 1| = {worst:.1%} (goal <= 20 %: {'met' if worst <= 0.2 else 'MISSED'})"
    )
    print(f"wrote {opts.out}")
    return 0 if worst <= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
