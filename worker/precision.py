"""Numeric precision: which dtype holds the weights and which one the forward pass computes in.

Default (mixed): fp32 master weights, gradients and AdamW state, with the forward/backward under
``torch.autocast`` to ``--model-dtype`` on GPU (fp16 adds a loss scaler). On CPU mixed precision
runs plain fp32: CPU autocast is slow and would break CPU bit-exactness tests for no gain.
``--pure-dtype`` is the seed's mode: everything (weights, grads, optimizer state) in ``--model-dtype``.

With FSDP, mixed precision is FSDP's own (``MixedPrecisionPolicy``, applied in ``worker.parallel``)
instead of autocast: the fp32 master shards are gathered as ``--model-dtype`` parameters for the
forward and backward, and gradients are reduced in fp32. On a CPU it is plain fp32 as well.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger("pyrecover.worker")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}


@dataclass(frozen=True, kw_only=True)
class Precision:
    param_dtype: torch.dtype
    """dtype of parameters, gradients and optimizer state."""
    autocast_dtype: torch.dtype | None
    """dtype the forward pass computes in (None: no autocast)."""
    device_type: str
    fsdp_param_dtype: torch.dtype | None = None
    """FSDP only: the dtype the gathered parameters compute in, gradients being reduced in fp32
    (None: the parameters' own dtype, reduced in it)."""

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in (what MFU is measured against)."""
        return self.autocast_dtype or self.fsdp_param_dtype or self.param_dtype

    @property
    def needs_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def resolve_precision(
    model_dtype: str, *, mixed: bool, device: torch.device, parallelism: str = "ddp"
) -> Precision:
    dtype = DTYPES[model_dtype]
    if not mixed:
        return Precision(param_dtype=dtype, autocast_dtype=None, device_type=device.type)
    if dtype in (torch.float32, torch.float64):
        return Precision(param_dtype=dtype, autocast_dtype=None, device_type=device.type)
    if device.type != "cuda":
        log.info(
            "mixed precision on %s: fp32 training (autocast to %s is GPU-only)", device.type, model_dtype
        )
        return Precision(param_dtype=torch.float32, autocast_dtype=None, device_type=device.type)
    if parallelism == "fsdp":
        return Precision(
            param_dtype=torch.float32, autocast_dtype=None, device_type=device.type, fsdp_param_dtype=dtype
        )
    return Precision(param_dtype=torch.float32, autocast_dtype=dtype, device_type=device.type)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set torch's default dtype (parameters are created in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
