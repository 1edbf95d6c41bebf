"""``run_training(config)``: build everything one attempt needs, train, and map the outcome to an exit code.

Read top to bottom: distributed setup → the watchdog (``worker.watchdog``) → components
(``worker.components``: seeds, data, model, optimizer) → checkpoint manager and resume → the step
loop (``worker.loop``) → final report. Failures become one clear line on stderr and a non-zero code
(``shared.exit_codes``); an attempt that fails before its first step leaves no new directory behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.events import EventType, HangPhase
from shared.exclusions import pins_host
from shared.exit_codes import ExitCode
from shared.paths import LOSS_CSV_NAME
from worker import testhooks
from worker.components import Components, build_components
from worker.config import IMMUTABLE_KEYS, ConfigError, TrainConfig
from worker.data.files import DataError
from worker.deadline import Clock
from worker.distributed import DistInfo, init_distributed
from worker.divergence import DataSkipError, skip_data_window
from worker.heartbeats import this_host
from worker.loop import TrainingLoop
from worker.lr import apply_peak_lr
from worker.reporting import Reporter, make_reporter
from worker.shutdown import teardown
from worker.watchdog import Watchdog, WatchdogConfig, open_watchdog

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


def restore(
    config: TrainConfig,
    comp: Components,
    manager: Any,
    state: Any,
    reporter: Reporter,
    *,
    progress: Callable[[], None] | None = None,
) -> Any:
    """Resume as ``--resume-from-checkpoint`` says; returns the RestoreResult or None (fresh start).

    "latest" over a run directory with a past but nothing that verifies raises FreshStartRefused
    unless ``--allow-restart-from-scratch``; ``--data-skip-to`` then moves the stream forward
    (``progress`` is called for every batch it skips).
    """
    from worker.checkpoint import CheckpointError

    target = config.resume_from_checkpoint
    if target == "none":
        if manager.latest() is not None:
            raise ConfigError(
                "resume_from_checkpoint: 'none' but committed checkpoints exist for experiment "
                f"{config.experiment_name!r}; use 'latest' or another --experiment-name"
            )
        _set_aside_losses(manager)
        return None
    try:
        result = manager.restore(state, target, allow_fresh=config.allow_restart_from_scratch)
    except CheckpointError as exc:  # the run's events name what was found, not only the log
        _report_checkpoint_warnings(reporter, exc.warnings, step=0)
        raise
    if result is None:
        if config.data_skip_to is not None:
            raise ConfigError(
                f"data_skip_to: needs a checkpoint to resume from; none is committed in {manager.run_dir}"
            )
        _set_aside_losses(manager)
        return None
    comp.dataset.load_state_dict(state.progress["data_cursor"])
    if config.data_skip_to is not None:
        _skip_data(config, comp, reporter, step=int(state.progress["step"]), progress=progress)
    apply_peak_lr(comp.scheduler, config.peak_learning_rate)
    _report_checkpoint_warnings(reporter, result.warnings, step=int(state.progress["step"]))
    if result.changed_fields:
        log.info("resumed with changed settings: %s", result.changed_fields)
    return result


def _report_checkpoint_warnings(reporter: Reporter, warnings: Sequence[str], *, step: int) -> None:
    for warning in warnings:
        log.warning("checkpoint: %s", warning)
        reporter.emit(EventType.WARNING, step=step, kind="checkpoint", message=str(warning))


def _skip_data(
    config: TrainConfig,
    comp: Components,
    reporter: Reporter,
    *,
    step: int,
    progress: Callable[[], None] | None,
) -> None:
    """``--data-skip-to``: the rollback after a divergence skips the window that preceded it."""
    assert config.data_skip_to is not None
    try:
        first, last = skip_data_window(
            comp.dataset,
            config.data_skip_to,
            global_batch=config.batch_size,
            max_chunks=config.training_steps * config.batch_size,
            progress=progress,
        )
    except DataSkipError as exc:
        raise ConfigError(str(exc)) from None
    message = (
        f"skipped the data window of samples {first}..{last} ({(last - first) // config.batch_size} "
        f"global batches) after resuming at step {step} (--data-skip-to)"
    )
    log.warning("%s", message)
    reporter.emit(EventType.WARNING, step=step, kind="data_skipped", message=message)


def _set_aside_losses(manager: Any) -> None:
    """A fresh start rewrites loss.csv from step 0: keep the old rows beside it (rank 0)."""
    path = manager.run_dir / LOSS_CSV_NAME
    if manager.rank != 0 or not path.is_file() or path.stat().st_size <= len("step,loss\n"):
        return
    aside = path.with_name(f"{LOSS_CSV_NAME}.before-restart-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    log.warning("starting from step 0: the previous %s is kept as %s", LOSS_CSV_NAME, aside.name)


def watchdog_config(config: TrainConfig) -> WatchdogConfig:
    return WatchdogConfig(
        enabled=config.hang_detection,
        factor=config.hang_factor,
        floor=config.hang_floor_seconds,
        startup=config.hang_startup_seconds,
        exit_allowance=config.exit_allowance,
    )


def _close_watchdog(watch: Watchdog, code: int, *, trained: bool, run_dir: Path) -> None:
    """Keep the heartbeats and stacks of a hang; after a start that failed before its first step,
    remove the run directory too if this attempt created it and nothing else is in it."""
    watch.close(keep=code == ExitCode.HUNG)
    if not trained and watch.created_run_dir and code != ExitCode.OK:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def _fail(code: ExitCode, message: str, reporter: Reporter | None, step: int) -> int:
    print(f"pyrecover train: error: {message}", file=sys.stderr, flush=True)
    if reporter is not None:
        # A device or interconnect fault names this machine, so the controller keeps the run off it.
        pinned = {"host": this_host()} if code == ExitCode.FAILURE and pins_host(message) else {}
        reporter.emit(EventType.FAILED, step=step, error=message[:8000], **pinned)
    return int(code)


def run_training(config: TrainConfig, *, clock: Clock = time.time) -> int:
    """Train one attempt; returns the process exit code (shared.exit_codes).

    Whatever happens, the reporter is closed and the process groups are destroyed before it
    returns, within ``config.exit_allowance`` seconds (``worker.shutdown.teardown``).
    """
    from worker.checkpoint import CheckpointError, FreshStartRefused, SaveFailed
    from worker.hf.pretrained import load_pretrained
    from worker.trackers import with_trackers

    started = time.monotonic()
    info: DistInfo | None = None
    reporter: Reporter | None = None
    loop: TrainingLoop | None = None
    watch: Watchdog | None = None
    run_dir = Path(config.checkpoint_dir) / config.experiment_name
    code: int = int(ExitCode.FAILURE)
    try:
        info = init_distributed(group_of_one=config.parallelism == "fsdp")
        reporter = make_reporter(rank=info.rank)
        config.check_world_size(info.world_size)
        watch = open_watchdog(watchdog_config(config), info=info, run_dir=run_dir, reporter=reporter)
        comp = build_components(config, info)
        reporter = with_trackers(reporter, config, is_main=info.is_main)  # progress → trackers (rank 0)
        manager, state = build_checkpointing(config, info, comp)
        batch_hook, manager = _test_hooks(config, info, comp, manager)
        watch.enter(HangPhase.LOAD)
        restored = restore(
            config, comp, manager, state, reporter, progress=lambda: watch.enter(HangPhase.LOAD)
        )
        if restored is None and config.init_from_hf is not None:  # a fresh start of an imported model
            load_pretrained(comp.model, config.init_from_hf)
        watch.enter(HangPhase.STARTUP)
        loop = TrainingLoop(
            config=config,
            info=info,
            comp=comp,
            manager=manager,
            state=state,
            reporter=reporter,
            clock=clock,
            watchdog=watch,
            batch_hook=batch_hook,
        )
        code = int(loop.run(restored=restored, startup_seconds=time.monotonic() - started))
    except ConfigError as exc:
        code = _fail(ExitCode.CONFIG_ERROR, str(exc), reporter, loop.step if loop else 0)
    except DataError as exc:  # found later: a cursor that does not fit the data, a changed file
        code = _fail(ExitCode.CONFIG_ERROR, f"dataset: {exc}", reporter, loop.step if loop else 0)
    except FreshStartRefused as exc:
        code = _fail(ExitCode.FRESH_START_REFUSED, str(exc), reporter, 0)
    except SaveFailed as exc:  # the committed checkpoints are intact: a retry may well succeed
        code = _fail(ExitCode.FAILURE, f"checkpoint: {exc}", reporter, loop.step if loop else 0)
    except CheckpointError as exc:
        code = _fail(ExitCode.CHECKPOINT_ERROR, f"checkpoint: {exc}", reporter, loop.step if loop else 0)
    except KeyboardInterrupt:
        code = _fail(ExitCode.INTERRUPTED, "interrupted", reporter, loop.step if loop else 0)
    except Exception as exc:
        if watch is not None and watch.tripped:
            watch.hold()  # it is reporting the hang and ends the process with its own code
        if watch is not None and watch.on_failure():  # a peer's hang broke our collective
            code = int(ExitCode.HUNG)
        else:
            log.exception("training failed")
            code = _fail(ExitCode.FAILURE, f"{type(exc).__name__}: {exc}", reporter, loop.step if loop else 0)
    finally:
        if watch is not None:
            _close_watchdog(watch, code, trained=loop is not None, run_dir=run_dir)
        # On success every rank committed the same final checkpoint and will meet in the exit
        # barrier (so do the ranks of a divergence: they agreed on it at a step boundary); after
        # a failure the other ranks may be stuck or gone, so no barrier then.
        agree = code in (ExitCode.OK, ExitCode.DIVERGED)
        teardown(info, reporter, allowance=config.exit_allowance, agree=agree)
    return code


def _test_hooks(config: TrainConfig, info: DistInfo, comp: Components, manager: Any) -> tuple[Any, Any]:
    """``worker.testhooks`` from ``PYRECOVER_TEST_*`` (tests only): (batch wrapper or None, manager)."""
    try:
        hooks = testhooks.FaultHooks.from_env(os.environ)
    except testhooks.HookError as exc:
        raise ConfigError(str(exc)) from None
    if not hooks.active:
        return None, manager
    return testhooks.install(
        hooks, rank=info.rank, comp=comp, manager=manager, global_batch=config.batch_size
    )
