"""The step loop: forward/backward, clipping, logging, periodic saves, and every way of stopping.

At each step boundary the ranks agree (one all-reduce) on the summed loss and on the stop flags
(signal received, controller request, deadline near), so every rank takes the same decision after
the same step. A graceful stop ends with a synchronous final checkpoint and exit code 0.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shared.events import EventType, StopReason, WorkerAction
from shared.exit_codes import ExitCode
from worker.components import Components
from worker.config import TrainConfig
from worker.deadline import Clock, DeadlineTracker, StopPolicy, measure_write_bandwidth
from worker.distributed import DistInfo, all_reduce_sum, log_rank0
from worker.loss_log import LossCSV
from worker.profiling import StepProfiler
from worker.reporting import Reporter
from worker.signals import StopSignals

log = logging.getLogger("pyrecover.worker")
IGNORE_INDEX = -100
# Flag slots in the per-step all-reduce (a SUM of 0/1 flags is > 0 iff any rank raised it).
_SIGNAL, _CTRL_STOP, _CTRL_CKPT, _DEADLINE = range(4)


class TrainingLoop:
    def __init__(
        self,
        *,
        config: TrainConfig,
        info: DistInfo,
        comp: Components,
        manager: Any,
        state: Any,
        reporter: Reporter,
        clock: Clock,
    ) -> None:
        self.config, self.info, self.comp = config, info, comp
        self.manager, self.state, self.reporter = manager, state, reporter
        self.clock = clock
        self.step = int(state.progress["step"])
        self.tokens_seen = int(state.progress["tokens_seen"])
        self.last_saved_step = -1
        self.tokens_per_step = config.batch_size * config.sequence_length
        self.run_dir = Path(config.checkpoint_dir) / config.experiment_name
        self.deadlines: DeadlineTracker | None = None
        self.policy: StopPolicy | None = None
        if config.timeaware_checkpointing:
            self.deadlines = DeadlineTracker(
                override=config.deadline, refresh_seconds=config.deadline_refresh_seconds, clock=clock
            )
            self.policy = StopPolicy(
                margin=config.deadline_margin, exit_allowance=config.exit_allowance, clock=clock
            )

    # --- set-up ---------------------------------------------------------------------------------
    def _prime_save_estimate(self) -> None:
        """Before any save was measured: state bytes (weights + optimizer) / measured write bandwidth."""
        assert self.policy is not None
        nbytes = sum(p.numel() * p.element_size() for p in self.comp.model.parameters()) * 3
        if self.config.use_torch_distributed_ckpt:
            nbytes //= self.info.world_size  # DCP: every rank writes its share
        bandwidth = measure_write_bandwidth(self.run_dir, nbytes=min(nbytes, 64 << 20) or (1 << 20))
        self.policy.set_state_size(nbytes, bandwidth)

    # --- one step -------------------------------------------------------------------------------
    def _train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """Forward/backward/update; returns (this rank's token-sum loss, global token count, grad norm)."""
        comp, device = self.comp, self.info.device
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        # The loss is normalised by the non-masked tokens of the GLOBAL batch, so it (and the update)
        # does not depend on how the batch is split over ranks. DDP averages gradients over ranks,
        # hence the factor world_size.
        (n_tokens,) = all_reduce_sum([float((labels != IGNORE_INDEX).sum().item())], self.info)
        n_tokens = max(n_tokens, 1.0)
        with comp.precision.autocast():
            logits = comp.model(inputs)
            loss_sum = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        loss = loss_sum * (self.info.world_size / n_tokens)
        if comp.grad_scaler is not None:
            comp.grad_scaler.scale(loss).backward()
            comp.grad_scaler.unscale_(comp.optimizer)
        else:
            loss.backward()
        max_norm = self.config.grad_max_norm if self.config.grad_max_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(comp.model.parameters(), max_norm)
        if comp.grad_scaler is not None:
            comp.grad_scaler.step(comp.optimizer)
            comp.grad_scaler.update()
        else:
            comp.optimizer.step()
        comp.scheduler.step()
        comp.optimizer.zero_grad(set_to_none=True)
        return loss_sum.detach(), n_tokens, float(grad_norm)

    # --- checkpoints ----------------------------------------------------------------------------
    def _update_progress(self) -> None:
        self.state.progress.update(
            step=self.step, tokens_seen=self.tokens_seen, data_cursor=self.comp.dataset.state_dict()
        )

    def _report_save(self, result: Any) -> None:
        if self.policy is not None:
            # A background save's full duration is what a synchronous final save would take.
            self.policy.record_save(result.save_seconds)
        self.reporter.emit(
            EventType.CHECKPOINT_COMMITTED,
            step=result.step,
            path=str(result.path),
            format=result.format,
            size_bytes=result.size_bytes,
            save_seconds=result.save_seconds,
            stall_seconds=result.stall_seconds,
            async_save=result.async_save,
            tokens_seen=result.tokens_seen,
            final=result.final,
        )
        if result.deleted_steps:  # after the commit that made them surplus: the rows exist by then
            self.reporter.emit(
                EventType.CHECKPOINTS_DELETED, step=result.step, steps=list(result.deleted_steps)
            )

    def _drain_completed(self) -> None:
        for result in self.manager.completed():
            self._report_save(result)

    def _save(self, *, final: bool) -> Any:
        self._update_progress()
        result = self.manager.save(self.step, self.state, final=final)
        self.last_saved_step = self.step
        if result is not None:
            self._report_save(result)
        self._drain_completed()
        return result

    # --- the loop -------------------------------------------------------------------------------
    def run(self, *, restored: Any, startup_seconds: float) -> ExitCode:
        config, info = self.config, self.info
        resume_step = self.step
        if restored is not None:
            self.last_saved_step = resume_step
            log_rank0(
                info,
                "resumed from %s at step %d (loaded in %.2fs)",
                restored.checkpoint.path,
                resume_step,
                restored.load_seconds,
            )
        csv = None
        if config.log_loss_to_csv and info.is_main:
            csv = LossCSV(self.run_dir / "loss.csv", resume_step=resume_step)
        if self.policy is not None:
            self._prime_save_estimate()
        deadline = self.deadlines.current() if self.deadlines else None
        if self.deadlines is not None:
            log_rank0(info, "deadline: %s (source: %s)", deadline, self.deadlines.source)
        self.reporter.emit(
            EventType.STARTED,
            step=resume_step,
            world_size=info.world_size,
            resumed_from=str(restored.checkpoint.path) if restored is not None else None,
            resume_step=resume_step,
            checkpoint_load_seconds=float(restored.load_seconds) if restored is not None else 0.0,
            startup_seconds=startup_seconds,
            deadline=deadline,
            training_steps=config.training_steps,
        )
        profiler = StepProfiler(
            enabled=config.profile,
            start=config.profile_step_start,
            end=config.profile_step_end,
            out_dir=Path(config.profile_dir) if config.profile_dir else self.run_dir / "profile",
            rank=info.rank,
            device=info.device,
        )
        try:
            with StopSignals() as signals, profiler:
                reason = self._loop(signals, profiler, csv, resume_step)
        finally:
            if csv is not None:
                csv.close()
        return self._finish(reason)

    def _boundary_flags(self, signals: StopSignals) -> list[float]:
        flags = [0.0, 0.0, 0.0, 0.0]
        flags[_SIGNAL] = float(signals.requested)
        action = self.reporter.requested_action()  # "none" except on rank 0 with a controller
        flags[_CTRL_STOP] = float(action == WorkerAction.STOP)
        flags[_CTRL_CKPT] = float(action == WorkerAction.CHECKPOINT)
        if self.policy is not None and self.deadlines is not None:
            flags[_DEADLINE] = float(self.policy.should_stop(self.deadlines.current()))
        return flags

    def _loop(
        self, signals: StopSignals, profiler: StepProfiler, csv: LossCSV | None, resume_step: int
    ) -> StopReason | None:
        """Train until the last step (``None``) or a stop (its reason; the final save is ``_finish``'s)."""
        config, info, comp = self.config, self.info, self.comp
        comp.model.train()
        batches = iter(comp.dataset)
        # Check once before the first step: a signal may have come during start-up, or the time left
        # may not even cover one step and a save. (The state is the resumed checkpoint: no save needed.)
        pre = [v > 0 for v in all_reduce_sum(self._boundary_flags(signals), info)]
        pre[_CTRL_CKPT] = False
        if self.step < config.training_steps and (reason := self._stop_reason(pre, resume_step)) is not None:
            return reason
        log_t, log_step = time.perf_counter(), self.step
        while self.step < config.training_steps:
            self.step += 1
            profiler.before_step(self.step)
            if self.policy is not None:
                self.policy.begin_step()
            try:
                inputs, labels = next(batches)
            except StopIteration:
                raise RuntimeError(f"the data stream ended at step {self.step}") from None
            lr = float(comp.scheduler.get_last_lr()[0])  # the rate this step uses
            loss_sum, n_tokens, grad_norm = self._train_step(inputs, labels)
            self.tokens_seen += self.tokens_per_step
            if info.device.type == "cuda":
                torch.cuda.synchronize()  # step time must include the queued GPU work
            if self.policy is not None:
                self.policy.end_step()
            profiler.after_step(self.step)
            reduced = all_reduce_sum([float(loss_sum.item()), *self._boundary_flags(signals)], info)
            loss = reduced[0] / n_tokens
            flags = [v > 0 for v in reduced[1:]]
            if csv is not None:
                csv.write(self.step, loss)
            if self.step == resume_step + 1 or self.step % config.logging_frequency == 0:
                now = time.perf_counter()
                self._log(loss, lr, grad_norm, (self.step - log_step) / max(now - log_t, 1e-9))
                log_t, log_step = now, self.step
            if self.step >= config.training_steps:
                return None  # done: the final (synchronous) save happens in _finish
            reason = self._stop_reason(flags, resume_step)
            if reason is not None:
                return reason  # likewise
            periodic = config.checkpoint_frequency > 0 and self.step % config.checkpoint_frequency == 0
            if periodic or flags[_CTRL_CKPT]:
                self._save(final=False)
                # The check above budgeted one more step + a save, not this save + a step + a save:
                # decide again now that the save is done (and committed, so stopping costs nothing).
                again = all_reduce_sum(self._boundary_flags(signals), info)
                reason = self._stop_reason([v > 0 for v in again], resume_step)
                if reason is not None:
                    return reason
            else:
                self._drain_completed()
        return None

    def _stop_reason(self, flags: list[bool], resume_step: int) -> StopReason | None:
        """Why to stop after this step; ``None`` to go on (or, at the last step, to finish)."""
        if self.step >= self.config.training_steps:
            return None
        if flags[_SIGNAL]:
            return StopReason.SIGNAL
        if flags[_CTRL_STOP]:
            return StopReason.CONTROLLER_REQUEST
        if flags[_DEADLINE]:
            return StopReason.DEADLINE
        stop_after = self.config.stop_after_steps
        if stop_after is not None and self.step - resume_step >= stop_after:
            return StopReason.STOP_AFTER_STEPS
        return None

    def _log(self, loss: float, lr: float, grad_norm: float, steps_per_s: float) -> None:
        from worker.metrics import mfu

        tokens_per_s = steps_per_s * self.tokens_per_step
        per_device = tokens_per_s / self.info.world_size
        flops = self.comp.flops_per_token * per_device
        peak = self.comp.peak_flops
        device_mfu = mfu(per_device, self.comp.flops_per_token, peak) if peak else None
        log_rank0(
            self.info,
            "step %d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s (%.0f/device) | %.3f TFLOPs%s",
            self.step,
            self.config.training_steps,
            loss,
            lr,
            grad_norm,
            tokens_per_s,
            per_device,
            flops / 1e12,
            f" | MFU {device_mfu:.1%}" if device_mfu is not None else "",
        )
        self.reporter.emit(
            EventType.PROGRESS,
            step=self.step,
            loss=loss,
            lr=lr,
            tokens_seen=self.tokens_seen,
            tokens_per_s=tokens_per_s,
            step_time=1.0 / steps_per_s if steps_per_s > 0 else 0.0,
            grad_norm=grad_norm if math.isfinite(grad_norm) else None,
            mfu=device_mfu,
        )

    def _finish(self, reason: StopReason | None) -> ExitCode:
        """The final checkpoint (unless this step is saved already), then ``finished`` or a clean stop."""
        info = self.info
        if reason is not None:
            deadline = self.deadlines.deadline if self.deadlines else None
            self.reporter.emit(EventType.STOPPING, step=self.step, reason=reason, deadline=deadline)
        result = None
        if self.step != self.last_saved_step:
            result = self._save(final=True)
        self.manager.wait()
        self._drain_completed()
        self.manager.close()
        where = str(result.path) if result is not None else f"step {self.last_saved_step} (already saved)"
        if reason is None:
            log_rank0(info, "finished %d steps; final checkpoint committed at %s", self.step, where)
            self.reporter.emit(EventType.FINISHED, step=self.step)
        else:
            log_rank0(
                info,
                "stopped at step %d (%s): checkpoint committed at %s; "
                "resume with --resume-from-checkpoint latest",
                self.step,
                reason.value,
                where,
            )
        return ExitCode.OK
