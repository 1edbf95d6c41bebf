"""Model size, training FLOPs per token, and model FLOPs utilisation (MFU) per device.

MFU = achieved model FLOP/s of ONE device / that device's peak. The upstream scripts divided the
global token rate by one GPU's peak, overstating MFU by the world size; here every rate is per
device.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.model import TransformerModelArgs

# Dense (no 2:4 sparsity) peak FLOP/s from the vendors' data sheets, by device name and dtype.
# "fp32" on Hopper/Ampere means TF32 tensor cores, which PyTorch uses for fp32 matmuls only when
# allowed (torch.backends.cuda.matmul.allow_tf32); "fp32-ieee" is the CUDA-core rate.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100-SXM": {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12, "fp32-ieee": 67e12, "fp8": 1979e12},
    "H100-PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12, "fp32-ieee": 51e12, "fp8": 1513e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12, "fp32-ieee": 67e12, "fp8": 1979e12},
    "GH200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12, "fp32-ieee": 67e12, "fp8": 1979e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12, "fp32-ieee": 19.5e12},
}

# Substrings of torch.cuda.get_device_name(), most specific first.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("GH200", "GH200"),
    ("H200", "H200"),
    ("H100 PCIE", "H100-PCIe"),
    ("H100", "H100-SXM"),
    ("A100", "A100"),
)

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def num_params(model: nn.Module, exclude_embedding: bool = False) -> int:
    """Number of parameters (each shared tensor counted once); optionally without the token embedding.

    The embedding is a lookup, not a matmul, so FLOP estimates leave it out; the output head is a
    real matmul and stays in (the seed counted it the same way).
    """
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    if exclude_embedding:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                total -= module.weight.numel()
    return total


def flops_per_token(args: TransformerModelArgs, num_params: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·d·S.

    N = parameters taking part in matmuls (pass ``num_params(model, exclude_embedding=True)``;
    the full count overestimates by 6·vocab·dim). Each such weight costs 2 FLOPs per token forward
    and 4 backward. The attention scores QKᵀ and the weighted sum AV add 2·2·S·d per layer forward,
    ×3 with backward = 12·L·d·S, with S = args.seq_len and d = args.dim. Like PaLM's appendix and
    the seed, this ignores the causal mask (which halves the useful attention work), so it is
    comparable with the usual published MFU figures.
    """
    return 6.0 * num_params + 12.0 * args.n_layers * args.dim * args.seq_len


def device_peak_name(device: torch.device | str | None = None) -> str | None:
    """The PEAK_FLOPS key for a CUDA device (or a device name string), or None if unknown."""
    if isinstance(device, str) and not device.startswith(("cuda", "cpu")):
        name = device
    else:
        dev = torch.device(device) if device is not None else torch.device("cuda")
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(dev)
    upper = name.upper()
    for pattern, key in _NAME_PATTERNS:
        if pattern in upper:
            return key
    return None


def peak_flops(device: torch.device | str | None, dtype: torch.dtype | str) -> float | None:
    """Peak dense FLOP/s of one device at ``dtype``; None for CPUs and devices not in the table."""
    key = device_peak_name(device)
    dname = dtype if isinstance(dtype, str) else _DTYPE_NAMES.get(dtype)
    if key is None or dname is None:
        return None
    return PEAK_FLOPS[key].get(dname)


def mfu(tokens_per_s_per_device: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation of one device as a fraction (0.4 = 40 %).

    ``tokens_per_s_per_device`` must be the tokens ONE device processed per second (the global
    rate divided by the world size); ``peak`` is that device's peak FLOP/s (see ``peak_flops``).
    """
    if peak <= 0:
        raise ValueError(f"peak: must be > 0 FLOP/s (got {peak!r})")
    return tokens_per_s_per_device * flops_per_token / peak
