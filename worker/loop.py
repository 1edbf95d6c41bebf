"""The step loop: micro-batches' forward/backward, clipping, the optimizer step, logging, periodic
saves, and every way of stopping.

At each step boundary the ranks agree (one all-reduce) on the summed loss and on the stop flags
(signal received, controller request, deadline near), so every rank takes the same decision after
the same step. A graceful stop ends with a synchronous final checkpoint and exit code 0.

Hooks of the fault handling (each marked where it sits): the watchdog is told the phase
(``worker.watchdog``), a non-finite update is skipped and a diverging run stops without committing
(``worker.divergence``), and a walltime signal tightens the deadline (``worker.signals.backstop``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shared import envvars
from shared.events import DivergenceReason, EventType, HangPhase, StopReason, WorkerAction
from shared.exit_codes import ExitCode
from shared.paths import LOSS_CSV_NAME
from worker.checkpoint import NonFiniteState
from worker.components import Components
from worker.config import TrainConfig
from worker.deadline import Clock, DeadlineTracker, StopPolicy, measure_write_bandwidth
from worker.distributed import DistInfo, all_reduce_sum, log_rank0
from worker.divergence import Diverged, DivergenceGuard, Verdict, report_divergence
from worker.loss_log import LossCSV
from worker.parallel import gradient_sync, micro_batches
from worker.profiling import StepProfiler
from worker.reporting import Reporter
from worker.signals import Backstop, StopSignals, read_signal_lead
from worker.watchdog import Watchdog, WatchdogConfig

log = logging.getLogger("pyrecover.worker")
IGNORE_INDEX = -100
# Flag slots in the per-step all-reduce (a SUM of 0/1 flags is > 0 iff any rank raised it).
_SIGNAL, _CTRL_STOP, _CTRL_CKPT, _DEADLINE = range(4)
_NON_FINITE_STATE = DivergenceReason.NON_FINITE_STATE


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
        watchdog: Watchdog | None = None,
        batch_hook: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
    ) -> None:
        self.config, self.info, self.comp = config, info, comp
        self.manager, self.state, self.reporter = manager, state, reporter
        self.clock = clock
        # Fault handling (worker.watchdog, worker.divergence, worker.signals, worker.testhooks).
        self.watch = watchdog or Watchdog(
            WatchdogConfig(enabled=False), rank=info.rank, world_size=info.world_size, directory=Path()
        )
        self.batch_hook = batch_hook
        self.guard = DivergenceGuard(
            max_skipped_steps=config.max_skipped_steps,
            spike_factor=config.loss_spike_factor,
            spike_window=config.loss_spike_window,
            info=info,
        )
        self.backstop = Backstop(read_signal_lead(os.environ))
        self.committed_step: int | None = None
        """The newest checkpoint known committed (resumed from or saved): a divergence window starts there."""
        self.committed_cursor: dict[str, Any] | None = None
        self._save_cursors: dict[int, dict[str, Any]] = {}
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
        """One optimizer step over this rank's share of the global batch.

        Returns (this rank's token-sum loss, the global batch's token count, the gradient norm).
        """
        info, accumulation = self.info, self.config.gradient_accumulation_steps
        inputs, labels = inputs.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        # The loss is normalised by the non-masked tokens of the GLOBAL batch (all micro-batches of
        # all ranks), so neither the split over ranks nor the one into micro-batches changes the
        # update. DDP and FSDP average gradients over ranks, hence the factor world_size.
        (n_tokens,) = all_reduce_sum([float((labels != IGNORE_INDEX).sum().item())], info)
        n_tokens = max(n_tokens, 1.0)
        scale = info.world_size / n_tokens
        loss_sum = torch.zeros((), dtype=torch.float32, device=info.device)
        for i, (x, y) in enumerate(micro_batches(inputs, labels, accumulation)):
            # Gradients accumulate locally; only the last micro-batch's backward communicates them.
            with gradient_sync(self.comp.model, enabled=i == accumulation - 1):
                micro_loss = self._forward_loss(x, y)
                self._backward(micro_loss * scale)
            loss_sum += micro_loss.detach()
        # The gradients of the whole global batch are ready: clip them, then step the optimizer.
        grad_norm = self._clip_gradients()
        self._optimizer_step(loss_sum, grad_norm)
        return loss_sum, n_tokens, grad_norm

    def _forward_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed (not averaged) token cross-entropy of one micro-batch. The logits die with this
        frame: only what the backward pass needs stays alive."""
        with self.comp.precision.autocast():
            logits = self.comp.model(inputs)
            return F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )

    def _backward(self, loss: torch.Tensor) -> None:
        scaler = self.comp.grad_scaler
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

    def _clip_gradients(self) -> float:
        """Clip the global gradient norm to ``grad_max_norm`` (0: only measure it); returns the norm
        before clipping. Under FSDP the norm of the shards is reduced over the ranks (a DTensor)."""
        comp = self.comp
        if comp.grad_scaler is not None:
            comp.grad_scaler.unscale_(comp.optimizer)
        max_norm = self.config.grad_max_norm if self.config.grad_max_norm > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(comp.model.parameters(), max_norm))

    def _optimizer_step(self, loss_sum: torch.Tensor, grad_norm: float) -> None:
        comp = self.comp
        # worker.divergence: a non-finite loss or gradient norm (on any rank) never reaches the optimizer.
        if self.guard.allow_update(loss_sum, grad_norm):
            if comp.grad_scaler is not None:
                comp.grad_scaler.step(comp.optimizer)
                comp.grad_scaler.update()
            else:
                comp.optimizer.step()
        elif comp.grad_scaler is not None:
            comp.grad_scaler.update()  # the scaler still lowers its scale after the overflow
        comp.scheduler.step()
        comp.optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ----------------------------------------------------------------------------
    def _update_progress(self) -> None:
        self.state.progress.update(
            step=self.step, tokens_seen=self.tokens_seen, data_cursor=self.comp.dataset.state_dict()
        )

    def _report_save(self, result: Any) -> None:
        if self.policy is not None:
            # A background save's full duration is what a synchronous final save would take.
            self.policy.record_save(result.save_seconds)
        self.watch.saved(result.save_seconds)
        self._note_committed(result.step)
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
        with self.watch.during(HangPhase.SAVE):  # rank 0 may be committing a background save
            for result in self.manager.completed():
                self._report_save(result)

    def _save(self, *, final: bool) -> Any:
        with self.watch.during(HangPhase.SAVE, measure=True):
            self._update_progress()
            self._save_cursors[self.step] = copy.deepcopy(self.state.progress["data_cursor"])
            result = self.manager.save(self.step, self.state, final=final)
            self.last_saved_step = self.step
            # A background save that finished meanwhile committed first: report it first, so the
            # controller sees commits (and the deletions each one caused) in the order they happened.
            self._drain_completed()
            if result is not None:
                self._report_save(result)
            return result

    def _note_committed(self, step: int) -> None:
        cursor = self._save_cursors.pop(step, None)
        if cursor is not None and (self.committed_step is None or step >= self.committed_step):
            self.committed_step, self.committed_cursor = step, cursor
        for older in [s for s in self._save_cursors if s < step]:
            del self._save_cursors[older]

    # --- the loop -------------------------------------------------------------------------------
    def run(self, *, restored: Any, startup_seconds: float) -> ExitCode:
        config, info = self.config, self.info
        resume_step = self.step
        if restored is not None:
            self.last_saved_step = resume_step
            self.committed_step = resume_step
            # The cursor as the checkpoint holds it (before any --data-skip-to moved the stream on).
            self.committed_cursor = copy.deepcopy(restored.checkpoint.manifest.get("data_cursor"))
            log_rank0(
                info,
                "resumed from %s at step %d (loaded in %.2fs)",
                restored.checkpoint.path,
                resume_step,
                restored.load_seconds,
            )
        csv = None
        if config.log_loss_to_csv and info.is_main:
            csv = LossCSV(self.run_dir / LOSS_CSV_NAME, resume_step=resume_step)
        if self.policy is not None:
            self._prime_save_estimate()
        deadline = self.deadlines.current() if self.deadlines else None
        if self.deadlines is not None:
            log_rank0(info, "deadline: %s (source: %s)", deadline, self.deadlines.source)
        started_at = time.time()
        if number := os.environ.get(envvars.ATTEMPT, "").strip():
            # Where the controller may read it if this attempt's reports never arrive (its ondisk).
            self.manager.attempt = {"number": number, "training_started_at": started_at}
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
            try:
                with StopSignals() as signals, profiler:
                    reason = self._loop(signals, profiler, csv, resume_step)
            finally:
                if csv is not None:
                    csv.close()
            return self._finish(reason)
        except NonFiniteState as exc:  # worker.divergence: the save was refused, nothing written
            message = f"diverged at step {self.step}: {exc}"
            return self._diverged(Verdict(reason=_NON_FINITE_STATE, step=self.step, message=message))
        except Diverged as exc:
            return self._diverged(exc.verdict)

    def _boundary_flags(self, signals: StopSignals) -> list[float]:
        flags = [0.0, 0.0, 0.0, 0.0]
        # worker.signals.Backstop: a walltime warning tightens the deadline; a TERM stops at once.
        flags[_SIGNAL] = float(self.backstop.stop_now(signals, self.deadlines if self.policy else None))
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
        batches: Iterator[Any] = iter(comp.dataset)
        if self.batch_hook is not None:  # worker.testhooks (tests only)
            batches = self.batch_hook(batches)
        batches = self.watch.reading(batches)  # worker.watchdog: a rank stuck in a read says so
        # Check once before the first step: a signal may have come during start-up, or the time left
        # may not even cover one step and a save. (The state is the resumed checkpoint: no save needed.)
        pre = [v > 0 for v in all_reduce_sum(self._boundary_flags(signals), info)]
        pre[_CTRL_CKPT] = False
        if self.step < config.training_steps and (reason := self._stop_reason(pre, resume_step)) is not None:
            return reason
        log_t, log_step = time.perf_counter(), self.step
        while self.step < config.training_steps:
            self.step += 1
            self.watch.enter(HangPhase.STEP, self.step)
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
            self.watch.step_done()
            loss = reduced[0] / n_tokens
            flags = [v > 0 for v in reduced[1:]]
            if csv is not None:
                csv.write(self.step, loss)
            if self.step == resume_step + 1 or self.step % config.logging_frequency == 0:
                now = time.perf_counter()
                self._log(loss, lr, grad_norm, (self.step - log_step) / max(now - log_t, 1e-9))
                log_t, log_step = now, self.step
            if (verdict := self.guard.observe(self.step, loss)) is not None:  # worker.divergence
                raise Diverged(verdict)
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
            skipped_steps=self.guard.skipped_total,
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
        with self.watch.during(HangPhase.SAVE):
            for done in self.manager.wait():
                self._report_save(done)
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

    def _diverged(self, verdict: Verdict) -> ExitCode:
        """Stop without committing this state: report the data window since the last commit, exit 6.

        A background save already in flight holds an earlier state that passed the finite check
        when it started, so it may still commit (and then starts the window).
        """
        with self.watch.during(HangPhase.SAVE):
            try:
                for done in self.manager.wait():
                    self._report_save(done)
            except Exception as exc:  # the divergence is the news; a failed earlier save only a note
                log.warning("a background save failed while stopping for divergence: %s", exc)
            self.manager.close()
        report_divergence(
            self.reporter,
            verdict,
            committed_step=self.committed_step,
            committed_cursor=self.committed_cursor,
            cursor=self.comp.dataset.state_dict(),
        )
        return ExitCode.DIVERGED
