"""``TrainState``: everything one rank needs to resume exactly, behind the Stateful protocol.

The state dict has a fixed, wrapper-independent layout shared by both formats:

- ``model``: ``{fqn: tensor}`` from DCP's ``get_state_dict``, so neither DDP's ``module.`` nor
  ``torch.compile``'s ``_orig_mod.`` prefix ends up in a key. Under FSDP the values are this rank's
  shards (``DTensor``), which DCP writes sharded and reshards on load for any world size and for
  either parallelism; with ``full_state_dict`` (the vanilla format) they are whole tensors gathered
  on rank 0, and on load every rank cuts its own shards out of the whole tensors;
- ``optim``: the optimizer state keyed by parameter fqn (flattened). ``get_state_dict`` first
  materialises the state of a fresh optimizer, so a resume has real ``exp_avg``/``exp_avg_sq``
  tensors to load into (upstream's DCP resume silently reset AdamW's moments);
- ``meta``: scheduler state, the loop's progress dict and the saving world size, pickled into
  one bytes blob so DCP stores it whole (its nested-dict flattening would otherwise make the
  set of keys depend on what the data cursor happens to contain);
- ``rng``: ``{"rank_<r>": blob}`` with this rank's python/numpy/torch/CUDA generator states; the
  key is rank-specific because DCP de-duplicates identical keys across ranks.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger("pyrecover.worker.checkpoint")

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
# Whole tensors on rank 0, in host memory (the other ranks get empty dicts): what torch.save writes.
_FULL_SAVE = StateDictOptions(flatten_optimizer_state_dict=True, full_state_dict=True, cpu_offload=True)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: Any) -> Any:
    # Blobs come only from checkpoints this code wrote into the run's own directory.
    if isinstance(blob, bytes | bytearray):
        return pickle.loads(blob)
    raise TypeError(f"expected a bytes blob in the checkpoint, got {type(blob).__name__}")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP), or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no floating-point tensor in ``tensors`` holds NaN or inf (this rank's shards only).

    One device sync in all: the per-tensor checks are stacked and reduced on the device.
    """
    checks = []
    for t in tensors:
        local = _local(t)
        if local.is_floating_point() and local.numel():
            checks.append(torch.isfinite(local).all())
    if not checks:
        return True
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for c in checks:
        by_device.setdefault(c.device, []).append(c)
    return all(bool(torch.stack(group).all()) for group in by_device.values())


def _shards_of(whole: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``whole`` with each tensor whose live counterpart is a DTensor replaced by this rank's shard of
    it, laid out like the live one (a local slice: ``src_data_rank=None`` communicates nothing)."""
    out: dict[str, Any] = {}
    for key, value in whole.items():
        target = live.get(key)
        if isinstance(target, DTensor) and isinstance(value, torch.Tensor):
            value = distribute_tensor(
                value.to(target.device), target.device_mesh, target.placements, src_data_rank=None
            )
        out[key] = value
    return out


class TrainState:
    """Model, optimizer, scheduler, the loop's progress dict and this rank's RNG, as one Stateful.

    ``progress`` is owned and mutated by the loop (``step``, ``tokens_seen``, ``data_cursor`` …);
    ``load_state_dict`` updates it in place, so the loop's reference stays valid.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optimizer,
        lr_scheduler: LRScheduler,
        progress: dict[str, Any],
        full_state_dict: bool = False,
    ) -> None:
        self.model = model
        self.full_state_dict = full_state_dict
        """``state_dict()`` gathers whole tensors on rank 0 (vanilla checkpoints of FSDP shards)."""
        self._sharded = any(isinstance(p, DTensor) for p in model.parameters())
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.progress = progress
        self.notes: list[str] = []
        """What the last load_state_dict decided that the caller should hear about (e.g. RNG kept)."""

    def is_finite(self) -> bool:
        """No NaN/inf in this rank's weights or optimizer state (its shards, under FSDP)."""
        tensors = [p.detach() for p in self.model.parameters()]
        for per_param in self.optimizer.state.values():
            tensors.extend(v for v in per_param.values() if isinstance(v, torch.Tensor))
        return all_finite(tensors)

    def meta_blob(self) -> bytes:
        _, world = _rank_world()
        return pack(
            {"lr_scheduler": self.lr_scheduler.state_dict(), "progress": self.progress, "world_size": world}
        )

    def state_dict(self) -> dict[str, Any]:
        rank, _ = _rank_world()
        options = _FULL_SAVE if self.full_state_dict else _OPTIONS
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=options)
        return {
            "model": model_sd,
            "optim": optim_sd,
            "meta": self.meta_blob(),
            "rng": {f"rank_{rank}": pack(capture_rng())},
        }

    def load_template(self, *, with_rng: bool) -> dict[str, Any]:
        """A state dict for DCP to load into: live tensors plus placeholders for the blobs."""
        rank, _ = _rank_world()
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
        template: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "meta": b""}
        if with_rng:
            template["rng"] = {f"rank_{rank}": b""}
        return template

    def load_state_dict(self, state_dict: dict[str, Any], *, whole_tensors: bool = False) -> None:
        """Load ``state_dict``; ``whole_tensors``: its model/optim values are whole tensors (a vanilla
        checkpoint), which sharded parameters take their own shard of."""
        rank, world = _rank_world()
        self.notes = []
        model_sd, optim_sd = state_dict["model"], state_dict["optim"]
        if whole_tensors and self._sharded:
            # set_state_dict's own full_state_dict load fails on flattened optimizer state (torch
            # 2.13: KeyError 'param_groups.0.params.0'), so the shards are cut here instead.
            live_model, live_optim = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
            model_sd, optim_sd = _shards_of(model_sd, live_model), _shards_of(optim_sd, live_optim)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=_OPTIONS
        )
        meta = unpack(state_dict["meta"])
        self.lr_scheduler.load_state_dict(meta["lr_scheduler"])
        self.progress.clear()
        self.progress.update(meta["progress"])
        blob = state_dict.get("rng", {}).get(f"rank_{rank}")
        if meta["world_size"] == world and blob:
            restore_rng(unpack(blob))
        else:
            self.notes.append(
                f"RNG state not restored: checkpoint was written by {meta['world_size']} rank(s), "
                f"this run has {world}; keeping the current generators"
            )
            log.info(self.notes[-1])
