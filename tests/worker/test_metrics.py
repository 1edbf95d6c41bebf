"""worker.metrics: parameter counts, FLOPs per token, peak table lookup, MFU per device."""

from __future__ import annotations

import pytest
import torch

from worker.metrics import PEAK_FLOPS, device_peak_name, flops_per_token, mfu, num_params, peak_flops
from worker.model import Transformer, model_args


def test_num_params_with_and_without_the_embedding() -> None:
    args = model_args("tiny", vocab_size=100, seq_len=16)
    model = Transformer(args)
    total = sum(p.numel() for p in model.parameters())
    assert num_params(model) == total
    assert num_params(model, exclude_embedding=True) == total - 100 * args.dim
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert num_params(tied) == 16 + 4 + 4  # a shared tensor counts once


def test_flops_per_token_formula() -> None:
    args = model_args("llama3-8b", vocab_size=131072, seq_len=2048)
    with torch.device("meta"):
        n = num_params(Transformer(args), exclude_embedding=True)
    # 6N + 12·L·d·S; the upstream review computed 48.32 GFLOP/token for this configuration.
    assert flops_per_token(args, n) == 6 * n + 12 * 32 * 4096 * 2048
    assert round(flops_per_token(args, n) / 1e9, 2) == 48.32


def test_mfu_is_per_device() -> None:
    peak = PEAK_FLOPS["H100-SXM"]["bf16"]
    # 8 GPUs together at 8 x 6564 tok/s on the 8B model are as efficient as one GPU at 6564 tok/s.
    per_device = 8 * 6564 / 8
    assert mfu(per_device, 48.32e9, peak) == pytest.approx(0.3207, abs=1e-4)
    with pytest.raises(ValueError, match="peak"):
        mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("Tesla T4", None),
    ],
)
def test_device_names_map_to_the_peak_table(name: str, key: str | None) -> None:
    assert device_peak_name(name) == key
    if key is not None:
        assert peak_flops(name, torch.bfloat16) == PEAK_FLOPS[key]["bf16"]
        assert peak_flops(name, "fp32") == PEAK_FLOPS[key]["fp32"]


def test_cpu_has_no_peak() -> None:
    assert peak_flops(torch.device("cpu"), torch.float32) is None
    assert peak_flops("NVIDIA H100 80GB HBM3", torch.float64) is None
