"""What one attempt trains with: the model, optimizer, LR schedule, data stream and precision.

``build_components`` reads top to bottom: seeds → tokenizer and data stream → model (seeded init,
optional compile, DDP or FSDP: ``worker.parallel``) → AdamW + LR schedule. ``worker.train`` calls
it; ``worker.loop`` trains with the result.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.config import ConfigError, TrainConfig
from worker.distributed import DistInfo, log_rank0
from worker.lr import build_lr_scheduler
from worker.parallel import parallelize
from worker.precision import Precision, default_dtype, resolve_precision

log = logging.getLogger("pyrecover.worker")


@dataclass(kw_only=True)
class Components:
    """What the step loop works with."""

    model: torch.nn.Module
    """The (possibly compiled) DDP-wrapped or FSDP-sharded model that trains."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: Any
    """worker.data.IterableParquetDataset: yields this rank's (inputs, labels) per step; global cursor."""
    precision: Precision
    grad_scaler: torch.amp.GradScaler | None
    flops_per_token: float
    num_params: int
    peak_flops: float | None
    """This device's peak FLOP/s at the compute dtype (None on CPU / unknown devices: no MFU)."""


def seed_everything(seed: int) -> None:
    """Same seed on every rank: identical initial weights, and nothing random differs between ranks."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_data(config: TrainConfig, info: DistInfo) -> tuple[Any, int]:
    """The data stream and the vocabulary size. Every problem with the dataset or the tokenizer is a
    ConfigError naming the field (exit code 3, one line): retrying cannot fix it."""
    from worker.data import DataError, load_tokenizer
    from worker.data.source import open_training_dataset, resolve_dataset

    try:  # a token store (pyrecover data tokenize) or Parquet files to stream
        source = resolve_dataset(config.dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"dataset: {exc}") from exc
    try:
        tokenizer = load_tokenizer(config.tokenizer_name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tokenizer_name_or_path: cannot load {config.tokenizer_name_or_path!r}: {exc}"
        ) from exc
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ConfigError(f"tokenizer_name_or_path: {config.tokenizer_name_or_path!r} has no BOS token")
    try:
        dataset = open_training_dataset(
            source,
            tokenizer,
            tokenizer_spec=config.tokenizer_name_or_path,
            sequence_length=config.sequence_length,
            rank=info.rank,
            world_size=info.world_size,
            local_batch_size=config.batch_size // info.world_size,
            bos_token_id=bos,
            mode=config.dataset_mode,
            training_samples=config.training_steps * config.batch_size,  # the seed's training_samples
        )
    except DataError as exc:  # e.g. files without rows, a store built with another tokenizer
        raise ConfigError(f"dataset: {exc}") from exc
    return dataset, len(tokenizer)


def _build_optimizer(
    config: TrainConfig, model: torch.nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.fused_optimizer:
        try:
            return torch.optim.AdamW(params, lr=config.peak_learning_rate, fused=True)
        except (RuntimeError, ValueError) as exc:
            log.warning("fused AdamW not supported on %s (%s); using the default implementation", device, exc)
    return torch.optim.AdamW(params, lr=config.peak_learning_rate)


def build_components(config: TrainConfig, info: DistInfo) -> Components:
    from worker.hf.pretrained import model_shape
    from worker.metrics import flops_per_token, num_params, peak_flops
    from worker.model import Transformer

    seed_everything(config.seed)
    dataset, vocab_size = _build_data(config, info)
    args = model_shape(config, vocab_size=vocab_size)  # the preset's, or init_from_hf's config.json
    precision = resolve_precision(
        config.model_dtype, mixed=config.mixed_precision, device=info.device, parallelism=config.parallelism
    )
    # The whole model is initialised from the seed on every rank before anything is sharded, so the
    # initial weights are the same for any world size and either parallelism.
    with default_dtype(precision.param_dtype):
        base = Transformer(args)
        base.init_weights()
    base.activation_checkpointing = config.activation_checkpointing
    n_params = num_params(base)
    fpt = flops_per_token(args, num_params(base, exclude_embedding=True))
    model = parallelize(
        base, parallelism=config.parallelism, info=info, precision=precision, compile=config.compile
    )
    optimizer = _build_optimizer(config, model, info.device)
    scheduler = build_lr_scheduler(
        optimizer,
        schedule=config.lr_schedule,
        warmup_steps=config.lr_warmup_steps,
        training_steps=config.training_steps,
    )
    scaler = torch.amp.GradScaler(info.device.type) if precision.needs_grad_scaler else None
    log_rank0(
        info,
        "model %s: %.2fM parameters, vocab %d, seq %d, weights %s, compute %s, %s, world size %d, "
        "%d micro-batch(es) of %d sequences per rank%s",
        config.model_preset,
        n_params / 1e6,
        vocab_size,
        config.sequence_length,
        precision.param_dtype,
        precision.compute_dtype,
        config.parallelism,
        info.world_size,
        config.gradient_accumulation_steps,
        config.batch_size // (info.world_size * config.gradient_accumulation_steps),
        ", activation checkpointing" if config.activation_checkpointing else "",
    )
    return Components(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=dataset,
        precision=precision,
        grad_scaler=scaler,
        flops_per_token=float(fpt),
        num_params=n_params,
        peak_flops=peak_flops(info.device, precision.compute_dtype),
    )
