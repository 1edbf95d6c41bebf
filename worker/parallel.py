"""Data parallelism: how the model is spread over the ranks, how a step's batch becomes
micro-batches, and when gradients are synchronised.

- ``ddp``: every rank holds the whole model; ``DistributedDataParallel`` all-reduces (averages) the
  gradients during the last micro-batch's backward pass.
- ``fsdp``: FSDP2's ``fully_shard`` on each transformer block and then on the root (embedding,
  final norm, output head). Parameters, gradients and AdamW state live as 1/world shards
  (``DTensor``); a block's parameters are gathered just before its forward and backward and freed
  after. Gradients are reduce-scattered (averaged) after the last micro-batch's backward.

A step's data: the dataset yields this rank's share of the global batch (batch_size / world
sequences; the data cursor stays a global position), and ``micro_batches`` cuts that share into
``gradient_accumulation_steps`` equal, consecutive pieces, the same way under both parallelisms.
Which global sequences a rank trains on therefore depends only on the world size, never on the
accumulation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from worker.distributed import DistInfo
from worker.precision import Precision

log = logging.getLogger("pyrecover.worker")


def mixed_precision_policy(precision: Precision) -> MixedPrecisionPolicy:
    """bf16 (the compute dtype) gathered parameters with fp32 gradient reduction under mixed precision on
    a GPU; otherwise the parameters' own dtype for both (fp32 on a CPU).

    ``cast_forward_inputs=False``: a block's floating-point inputs include the fp32 RoPE table,
    which must not be rounded to bf16 (the residual stream is already in the compute dtype).
    """
    if precision.fsdp_param_dtype is None:
        return MixedPrecisionPolicy(cast_forward_inputs=False)
    return MixedPrecisionPolicy(
        param_dtype=precision.fsdp_param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


def parallelize(
    model: nn.Module, *, parallelism: str, info: DistInfo, precision: Precision, compile: bool
) -> nn.Module:
    """The model that trains: ``model`` (a ``worker.model.Transformer`` with initialised weights, on
    any device) compiled and wrapped for ``parallelism``, its parameters on ``info.device``.

    Under ``fsdp`` the model may still be on the CPU: ``fully_shard`` moves only this rank's shards
    to the device, so a model that fits the host but not one GPU can still be sharded.
    """
    if parallelism == "fsdp":
        return _fully_shard(model, info=info, precision=precision, compile=compile)
    if parallelism != "ddp":
        raise ValueError(f"parallelism: must be 'ddp' or 'fsdp' (got {parallelism!r})")
    model.to(info.device)
    if compile:
        model = cast(nn.Module, torch.compile(model))
    if info.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    return model


def _fully_shard(model: nn.Module, *, info: DistInfo, precision: Precision, compile: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("parallelism 'fsdp' needs a process group (worker.distributed.init_distributed)")
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    policy = mixed_precision_policy(precision)
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleDict) or not len(layers):
        raise TypeError("fsdp: the model has no transformer blocks (model.layers) to shard")
    for block in layers.values():
        if compile:
            block.compile()  # in place, per block: parameter names keep no '_orig_mod.' prefix
        # Resharding after the forward frees each block's gathered parameters until its backward:
        # the memory FSDP is for, at the price of a second all-gather per block.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    # The root unit holds what is left (embedding, final norm, output head); FSDP keeps the root's
    # parameters gathered from its forward through its backward.
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether the parameters are FSDP shards (a state dict of them is sharded, not whole tensors)."""
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, *, enabled: bool) -> Iterator[None]:
    """Forward + backward inside this context synchronise gradients across ranks only if ``enabled``.

    A micro-batch that is not the step's last one keeps its gradients local (DDP ``no_sync``; FSDP
    keeps unsharded gradients and skips the reduce-scatter), so a step communicates gradients once.
    """
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)  # applies to every FSDP unit below the root
        yield
    elif isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    else:
        yield


def micro_batches(
    inputs: torch.Tensor, labels: torch.Tensor, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of a step, ``[local_batch, L]``, as ``count`` consecutive micro-batches of
    ``local_batch / count`` sequences (views, no copy). Raises ValueError if it does not divide."""
    if count < 1 or inputs.shape[0] % count:
        raise ValueError(
            f"gradient_accumulation_steps: {inputs.shape[0]} sequences per rank do not split into "
            f"{count} equal micro-batches"
        )
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError(f"inputs ({inputs.shape[0]}) and labels ({labels.shape[0]}) differ in batch size")
    size = inputs.shape[0] // count
    return [(inputs[i : i + size], labels[i : i + size]) for i in range(0, inputs.shape[0], size)]


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters and optimizer state (a shard's own bytes under FSDP)."""

    def local(t: torch.Tensor) -> torch.Tensor:
        to_local = getattr(t, "to_local", None)
        return cast(torch.Tensor, to_local()) if callable(to_local) else t

    params = sum(local(p).numel() * p.element_size() for p in model.parameters())
    moments = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                moments += local(value).numel() * value.element_size()
    return {"parameters": params, "optimizer": moments}
