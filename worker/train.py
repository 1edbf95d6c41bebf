"""``run_training(config)``: build everything one attempt needs, train, and map the outcome to an exit code.

Read top to bottom: distributed setup → seeds → tokenizer and data stream → model (seeded init,
optional compile, DDP) → AdamW + LR schedule → checkpoint manager and resume → the step loop
(``worker.loop``) → final report. Failures become one clear line on stderr and a non-zero code.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from shared.exit_codes import ExitCode
from worker.config import IMMUTABLE_KEYS, ConfigError, TrainConfig
from worker.deadline import Clock
from worker.distributed import DistInfo, init_distributed, log_rank0
from worker.lr import apply_peak_lr, build_lr_scheduler
from worker.precision import Precision, default_dtype, resolve_precision
from worker.reporting import Reporter, make_reporter
from worker.shutdown import teardown

log = logging.getLogger("pyrecover.worker")


@dataclass(kw_only=True)
class Components:
    """What the step loop works with."""

    model: torch.nn.Module
    """The (possibly compiled, DDP-wrapped) model that trains."""
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
    from worker.data import IterableParquetDataset, load_tokenizer, resolve_parquet_files

    try:
        files = resolve_parquet_files(config.dataset)
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
    dataset = IterableParquetDataset(
        files,
        tokenizer,
        sequence_length=config.sequence_length,
        rank=info.rank,
        world_size=info.world_size,
        local_batch_size=config.batch_size // info.world_size,
        bos_token_id=bos,
    )
    return dataset, len(tokenizer)


def _build_optimizer(
    config: TrainConfig, model: torch.nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.fused_optimizer:
        try:
            return torch.optim.AdamW(params, lr=config.learning_rate, fused=True)
        except (RuntimeError, ValueError) as exc:
            log.warning("fused AdamW not supported on %s (%s); using the default implementation", device, exc)
    return torch.optim.AdamW(params, lr=config.learning_rate)


def build_components(config: TrainConfig, info: DistInfo) -> Components:
    from worker.metrics import flops_per_token, num_params, peak_flops
    from worker.model import Transformer, model_args

    seed_everything(config.seed)
    dataset, vocab_size = _build_data(config, info)
    args = model_args(config.model_preset, vocab_size=vocab_size, seq_len=config.sequence_length)
    precision = resolve_precision(config.model_dtype, mixed=config.mixed_precision, device=info.device)
    with default_dtype(precision.param_dtype):
        base = Transformer(args)
        base.init_weights()
    base.to(info.device)
    n_params = num_params(base)
    fpt = flops_per_token(args, num_params(base, exclude_embedding=True))
    model: torch.nn.Module = base
    if config.compile:
        model = cast(torch.nn.Module, torch.compile(model))
    if info.is_distributed:
        model = DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
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
        "model %s: %.2fM parameters, vocab %d, seq %d, weights %s, autocast %s, world size %d",
        config.model_preset,
        n_params / 1e6,
        vocab_size,
        config.sequence_length,
        precision.param_dtype,
        precision.autocast_dtype,
        info.world_size,
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
        peak_flops=peak_flops(info.device, precision.autocast_dtype or precision.param_dtype),
    )


def build_checkpointing(config: TrainConfig, info: DistInfo, comp: Components) -> tuple[Any, Any]:
    """The checkpoint manager and the TrainState it saves/restores (progress starts fresh at step 0)."""
    from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState

    manager = CheckpointManager(
        CheckpointConfig(
            root=Path(config.checkpoint_dir),
            run_name=config.experiment_name,
            format="dcp" if config.use_torch_distributed_ckpt else "vanilla",
            async_save=config.async_checkpoint,
            keep_last_k=config.keep_last_k,
            keep_every_n=config.keep_every_n or None,
        ),
        rank=info.rank,
        world_size=info.world_size,
        run_config=config.resolved(world_size=info.world_size),
        immutable_keys=IMMUTABLE_KEYS,
    )
    state = TrainState(
        model=comp.model,
        optimizer=comp.optimizer,
        lr_scheduler=comp.scheduler,
        progress={"step": 0, "tokens_seen": 0, "data_cursor": comp.dataset.state_dict()},
    )
    return manager, state


def restore(config: TrainConfig, comp: Components, manager: Any, state: Any, reporter: Reporter) -> Any:
    """Resume as ``--resume-from-checkpoint`` says; returns the RestoreResult or None (fresh start)."""
    target = config.resume_from_checkpoint
    if target == "none":
        if manager.latest() is not None:
            raise ConfigError(
                "resume_from_checkpoint: 'none' but committed checkpoints exist for experiment "
                f"{config.experiment_name!r}; use 'latest' or another --experiment-name"
            )
        return None
    result = manager.restore(state, target)
    if result is None:
        return None
    comp.dataset.load_state_dict(state.progress["data_cursor"])
    apply_peak_lr(comp.scheduler, config.learning_rate)
    for warning in result.warnings:
        log.warning("checkpoint: %s", warning)
        reporter.emit("warning", step=int(state.progress["step"]), kind="checkpoint", message=str(warning))
    if result.changed_fields:
        log.info("resumed with changed settings: %s", result.changed_fields)
    return result


def _fail(code: ExitCode, message: str, reporter: Reporter | None, step: int) -> int:
    print(f"pyrecover train: error: {message}", file=sys.stderr, flush=True)
    if reporter is not None:
        reporter.emit("failed", step=step, error=message[:8000])
    return int(code)


def run_training(config: TrainConfig, *, clock: Clock = time.time) -> int:
    """Train one attempt; returns the process exit code (shared.exit_codes).

    Whatever happens, the reporter is closed and the process groups are destroyed before it
    returns, within ``config.exit_allowance`` seconds (``worker.shutdown.teardown``).
    """
    from worker.checkpoint import CheckpointError
    from worker.loop import TrainingLoop

    started = time.monotonic()
    info: DistInfo | None = None
    reporter: Reporter | None = None
    loop: TrainingLoop | None = None
    code: int = int(ExitCode.FAILURE)
    try:
        info = init_distributed()
        reporter = make_reporter(rank=info.rank)
        config.check_world_size(info.world_size)
        comp = build_components(config, info)
        manager, state = build_checkpointing(config, info, comp)
        restored = restore(config, comp, manager, state, reporter)
        loop = TrainingLoop(
            config=config,
            info=info,
            comp=comp,
            manager=manager,
            state=state,
            reporter=reporter,
            clock=clock,
        )
        code = int(loop.run(restored=restored, startup_seconds=time.monotonic() - started))
    except ConfigError as exc:
        code = _fail(ExitCode.CONFIG_ERROR, str(exc), reporter, loop.step if loop else 0)
    except CheckpointError as exc:
        code = _fail(ExitCode.CHECKPOINT_ERROR, f"checkpoint: {exc}", reporter, loop.step if loop else 0)
    except KeyboardInterrupt:
        code = _fail(ExitCode.INTERRUPTED, "interrupted", reporter, loop.step if loop else 0)
    except Exception as exc:
        log.exception("training failed")
        code = _fail(ExitCode.FAILURE, f"{type(exc).__name__}: {exc}", reporter, loop.step if loop else 0)
    finally:
        # On success every rank committed the same final checkpoint and will meet in the exit
        # barrier; after a failure the other ranks may be stuck or gone, so no barrier then.
        teardown(info, reporter, allowance=config.exit_allowance, agree=code == ExitCode.OK)
    return code
