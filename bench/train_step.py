"""Training-step throughput: worker.model's Transformer vs transformers' LlamaForCausalLM, same shape.

Both models are built in this process from one configuration (a ``worker.model`` preset mapped
onto a ``LlamaConfig``: same width, depth, heads, KV heads, SwiGLU size, RoPE theta, norm eps,
untied head, SDPA attention), checked to have the same parameter count, and trained on the same
random batches with the same loss (cross-entropy over the logits) and AdamW. After a warm-up, the
timed steps alternate between the two models (and which one goes first), so drifting clocks or
background load hit both alike. A step = forward + backward + AdamW step + zero_grad.

    python bench/train_step.py [--preset small] [--steps 4] [--batch-size 2] [--seq-len 256] [--quick]
    python bench/train_step.py --device cuda --dtype bf16 --preset llama3-1b   # on a GPU: adds MFU

Goal: ours / Llama tokens/s >= 1.0. Writes bench/results/train_step.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from worker.metrics import flops_per_token, mfu, num_params, peak_flops
from worker.model import Transformer, TransformerModelArgs, model_args

RESULTS = Path(__file__).parent / "results" / "train_step.json"


def llama_twin(args: TransformerModelArgs) -> torch.nn.Module:
    """transformers' LlamaForCausalLM with exactly our shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def make_step(
    model: torch.nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], autocast: torch.dtype | None
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    # The fused AdamW kernel (CPU and CUDA) for both models: the optimizer is the same work for
    # either, and the slow multi-pass default would only dilute the difference between the models.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    device_type = next(model.parameters()).device.type

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> float:
        ctx = torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            logits = logits_of(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small", help="worker.model preset (default: small)")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's depth")
    parser.add_argument(
        "--quick", action="store_true", help="4 layers, seq 128, 3 steps: well under a minute"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast, fp32 weights"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.layers, opts.seq_len, opts.steps, opts.warmup = opts.layers or 4, 128, 3, 1

    device = torch.device(opts.device)
    autocast = torch.bfloat16 if opts.dtype == "bf16" else None
    args = model_args(opts.preset, vocab_size=opts.vocab_size, seq_len=opts.seq_len)
    if opts.layers:
        args = TransformerModelArgs(**{**args.__dict__, "n_layers": opts.layers})
    torch.manual_seed(0)
    ours = Transformer(args)
    ours.init_weights()
    theirs = llama_twin(args)
    n_ours, n_theirs = num_params(ours), num_params(theirs)
    if n_ours != n_theirs:
        raise SystemExit(f"shape mismatch: ours has {n_ours} parameters, LlamaForCausalLM {n_theirs}")
    ours.to(device)
    theirs.to(device)
    steps = {
        "ours": make_step(ours, ours, autocast),
        "llama": make_step(theirs, lambda x: theirs(input_ids=x, use_cache=False).logits, autocast),
    }
    gen = torch.Generator().manual_seed(1)
    shape = (opts.batch_size, opts.seq_len)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, args.vocab_size, (shape[0], shape[1] + 1), generator=gen).to(device)
        return ids[:, :-1], ids[:, 1:]

    for name, step in steps.items():
        for _ in range(opts.warmup):
            step(*batch())
        sync(device)
        print(f"warmed up {name}", file=sys.stderr)

    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(opts.steps):
        inputs, labels = batch()
        for name in order if i % 2 == 0 else reversed(order):  # alternate who goes first
            sync(device)
            t0 = time.perf_counter()
            steps[name](inputs, labels)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    tokens = opts.batch_size * opts.seq_len
    fpt = flops_per_token(args, num_params(ours, exclude_embedding=True))
    peak = peak_flops(device, autocast or torch.float32) if device.type == "cuda" else None
    results: dict[str, Any] = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "median_step_s": med,
            "tokens_per_s": tokens / med,
            "mfu": mfu(tokens / med, fpt, peak) if peak else None,
            "step_times_s": ts,
        }
    ratio = results["ours"]["tokens_per_s"] / results["llama"]["tokens_per_s"]
    record = {
        "bench": "train_step",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": opts.dtype,
        "torch": torch.__version__,
        "config": {**args.__dict__, "batch_size": opts.batch_size, "params": n_ours, "flops_per_token": fpt},
        "steps": opts.steps,
        "results": results,
        "ratio_ours_over_llama": ratio,
        "goal": "ratio >= 1.0",
        "goal_met": ratio >= 1.0,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\ntrain step: preset {opts.preset} ({n_ours / 1e6:.1f}M params, {args.n_layers} layers), "
          f"batch {opts.batch_size} x seq {opts.seq_len}, {opts.dtype} on {record['device']}, "
          f"{opts.steps} alternated steps each")  # fmt: skip
    print(f"{'model':<8} {'median step s':>14} {'tokens/s':>10} {'MFU':>7}")
    for name, r in results.items():
        m = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{name:<8} {r['median_step_s']:>14.3f} {r['tokens_per_s']:>10.1f} {m:>7}")
    print(f"ratio ours / LlamaForCausalLM: {ratio:.3f}  (goal >= 1.0: {'met' if ratio >= 1.0 else 'MISSED'})")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
