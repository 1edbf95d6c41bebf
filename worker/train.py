"""``run_training(config)``: build everything one attempt needs, train, and map the outcome to an exit code.

Read top to bottom: distributed setup → components (``worker.components``: seeds, data, model,
optimizer) → checkpoint manager and resume → the step loop (``worker.loop``) → final report.
Failures become one clear line on stderr and a non-zero code.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from shared.events import EventType
from shared.exit_codes import ExitCode
from worker.components import Components, build_components
from worker.config import IMMUTABLE_KEYS, ConfigError, TrainConfig
from worker.deadline import Clock
from worker.distributed import DistInfo, init_distributed
from worker.loop import TrainingLoop
from worker.lr import apply_peak_lr
from worker.reporting import Reporter, make_reporter
from worker.shutdown import teardown

log = logging.getLogger("pyrecover.worker")


def build_checkpointing(config: TrainConfig, info: DistInfo, comp: Components) -> tuple[Any, Any]:
    """The checkpoint manager and the TrainState it saves/restores (progress starts fresh at step 0)."""
    from worker.checkpoint import CheckpointConfig, CheckpointManager, TrainState
    from worker.hf.pretrained import model_config_record
    from worker.parallel import is_sharded

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
        # the model's shape is recorded so an export never guesses it (worker.hf)
        run_config=config.resolved(world_size=info.world_size, model=model_config_record(config, comp.model)),
        immutable_keys=IMMUTABLE_KEYS,
    )
    state = TrainState(
        model=comp.model,
        optimizer=comp.optimizer,
        lr_scheduler=comp.scheduler,
        progress={"step": 0, "tokens_seen": 0, "data_cursor": comp.dataset.state_dict()},
        # A vanilla checkpoint holds whole tensors written by rank 0: FSDP shards are gathered there.
        full_state_dict=not config.use_torch_distributed_ckpt and is_sharded(comp.model),
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
        reporter.emit(
            EventType.WARNING, step=int(state.progress["step"]), kind="checkpoint", message=str(warning)
        )
    if result.changed_fields:
        log.info("resumed with changed settings: %s", result.changed_fields)
    return result


def _fail(code: ExitCode, message: str, reporter: Reporter | None, step: int) -> int:
    print(f"pyrecover train: error: {message}", file=sys.stderr, flush=True)
    if reporter is not None:
        reporter.emit(EventType.FAILED, step=step, error=message[:8000])
    return int(code)


def run_training(config: TrainConfig, *, clock: Clock = time.time) -> int:
    """Train one attempt; returns the process exit code (shared.exit_codes).

    Whatever happens, the reporter is closed and the process groups are destroyed before it
    returns, within ``config.exit_allowance`` seconds (``worker.shutdown.teardown``).
    """
    from worker.checkpoint import CheckpointError
    from worker.hf.pretrained import load_pretrained
    from worker.trackers import with_trackers

    started = time.monotonic()
    info: DistInfo | None = None
    reporter: Reporter | None = None
    loop: TrainingLoop | None = None
    code: int = int(ExitCode.FAILURE)
    try:
        info = init_distributed(group_of_one=config.parallelism == "fsdp")
        reporter = make_reporter(rank=info.rank)
        config.check_world_size(info.world_size)
        comp = build_components(config, info)
        reporter = with_trackers(reporter, config, is_main=info.is_main)  # progress → trackers (rank 0)
        manager, state = build_checkpointing(config, info, comp)
        restored = restore(config, comp, manager, state, reporter)
        if restored is None and config.init_from_hf is not None:  # a fresh start of an imported model
            load_pretrained(comp.model, config.init_from_hf)
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
