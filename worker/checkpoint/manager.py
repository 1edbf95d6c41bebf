"""``CheckpointManager``: save, commit, retain and restore checkpoints of one run.

Commit protocol (docs/architecture.md, "Files on disk"): rank 0 picks a temporary sibling of
``step-<N>`` and broadcasts its name; every rank writes into it (DCP: its shard; vanilla: rank 0
writes everything after gathering each rank's RNG) with files fsynced; rank 0 then checksums the
files, writes ``manifest.json`` (fsynced), renames the directory to ``step-<N>`` and fsyncs the
run directory. A crash at any instant leaves either a temporary (ignored, removed later) or a
complete, verifiable ``step-<N>``.

Async saves and collectives: ``dcp.async_save`` runs its collectives on a separate gloo group
created once, lazily, so the background write never interleaves with the loop's all-reduces on
the default group. What happens after the write (collecting the checksums taken while writing,
reading back only other ranks' shards) runs in a private commit thread that performs no
collective at all. The commit itself (manifest + rename + retention) happens on rank 0 when the
loop polls ``completed()`` / ``wait()`` or starts the next save; rank 0 alone may commit because
DCP writes ``.metadata`` only after every rank reported its shard written. Only one save is ever
in flight: a new save waits for the previous (the CPU staging buffers are reused).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from shared.paths import step_dir, tmp_step_dir

from . import manifest as mf
from . import storage
from .commit import commit, committed_at, existing_result, retain
from .restore import choose_checkpoint, load_into
from .state import TrainState
from .types import (
    CheckpointConfig,
    CheckpointError,
    CommittedCheckpoint,
    FreshStartRefused,
    NonFiniteState,
    RestoreResult,
    SaveFailed,
    SaveResult,
)

log = logging.getLogger("pyrecover.worker.checkpoint")

_DCP_ERRORS = (Exception, CheckpointException)  # CheckpointException is a BaseException


@dataclass
class _InFlight:
    step: int
    tmp: Path
    future: Future[dict[str, dict[str, Any]] | None]
    started: float
    stall: float
    progress: dict[str, Any]


class CheckpointManager:
    """One per run and process; all ranks call ``save``/``restore`` at the same step (collective)."""

    def __init__(
        self,
        config: CheckpointConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        run_config: dict[str, Any] | None = None,
        immutable_keys: Collection[str] = (),
    ) -> None:
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise CheckpointError(f"world_size={world_size} needs an initialised process group")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.run_dir = config.run_dir
        self._run_config = run_config
        self._immutable = tuple(immutable_keys)
        self._restored_step: int | None = None
        self._inflight: _InFlight | None = None
        self._done: list[SaveResult] = []
        self._errors: list[CheckpointError] = []
        self._save_pg: dist.ProcessGroup | None = None
        self._async_writer: storage.DcpAsyncWriter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.attempt: dict[str, Any] = {}
        """Written into every manifest as ``attempt`` (the number, when its training started): what a
        controller that lost the reports reads off the disk for the attempt's figures. Not part of
        the saved state, so it never changes what a resume restores."""
        # The run directory is created by the first save, not here: a resume that fails must leave
        # no new directory behind (an empty one would look like a run that lost its checkpoints).

    # ------------------------------------------------------------------ queries

    def committed(self) -> list[CommittedCheckpoint]:
        return mf.list_committed(self.run_dir)

    def latest(self) -> CommittedCheckpoint | None:
        found = self.committed()
        return found[-1] if found else None

    # ------------------------------------------------------------------ save

    def save(
        self, step: int, state: TrainState, *, final: bool = False, blocking: bool | None = None
    ) -> SaveResult | None:
        """Save ``step``. Sync saves return the result; async ones return None (see ``completed()``)."""
        if step < 0:
            raise CheckpointError(f"step must be >= 0, got {step}")
        use_async = (self.config.async_save and not final) if blocking is None else not blocking
        if use_async and self.config.format != "dcp":
            raise CheckpointError("async saves need format='dcp'")
        started = time.perf_counter()
        self._refuse_non_finite(step, state)
        # One save at a time; a final save waits here. A failure of the previous async save is
        # reported by completed()/wait() (not collective), never raised here: an exception on
        # rank 0 alone would leave the other ranks waiting in the broadcast below.
        self._settle_inflight()
        progress = copy.deepcopy(state.progress)  # the loop keeps mutating it while we write

        decision: tuple[str, str] | None = None
        if self.rank == 0:
            try:
                existing = committed_at(step_dir(self.config.root, self.config.run_name, step))
                if existing is not None:
                    decision = ("existing", str(existing.path))
                else:
                    tmp = tmp_step_dir(self.config.root, self.config.run_name, step)
                    tmp.mkdir(parents=True)
                    decision = ("new", str(tmp))
            except OSError as e:
                decision = ("error", f"cannot create a checkpoint directory in {self.run_dir}: {e}")
        kind, where = self._broadcast(decision)
        if kind == "error":
            raise SaveFailed(where)
        if kind == "existing":
            result = existing_result(Path(where), final=final, async_save=use_async)
            log.info("checkpoint step %d is already committed at %s; not overwriting it", step, where)
            if use_async:
                self._done.append(result)
                return None
            return result
        tmp = Path(where)
        if use_async:
            self._start_async(step, state, tmp, started, progress)
            return None
        return self._save_sync(step, state, tmp, started, progress, final=final)

    def _save_sync(
        self,
        step: int,
        state: TrainState,
        tmp: Path,
        started: float,
        progress: dict[str, Any],
        *,
        final: bool,
    ) -> SaveResult:
        outcome: tuple[str, Any] | None = None
        deleted: list[int] = []
        try:
            sd = state.state_dict()
            known: dict[str, dict[str, Any]] | None
            if self.config.format == "dcp":
                known = self._gather_checksums(storage.dcp_save(sd, tmp, io_threads=self.config.io_threads))
            else:
                known = self._save_vanilla(sd, tmp)
            if self.rank == 0:
                committed, deleted = self._commit(step, tmp, known, progress)
                outcome = ("ok", committed.manifest["size_bytes"])
        except _DCP_ERRORS as e:
            if self.world_size == 1:
                raise SaveFailed(f"saving step {step} into {tmp} failed: {e}") from e
            outcome = ("error", f"rank {self.rank}: saving step {step} into {tmp} failed: {e}")
            log.error(outcome[1])
        # Every rank learns rank 0's outcome, so all agree the step is committed (or all raise).
        status, value = self._broadcast(outcome)
        if status == "error":
            raise SaveFailed(str(value))
        elapsed = time.perf_counter() - started
        result = SaveResult(
            path=step_dir(self.config.root, self.config.run_name, step),
            step=step,
            format=self.config.format,
            size_bytes=int(value),
            save_seconds=elapsed,
            stall_seconds=elapsed,
            async_save=False,
            tokens_seen=int(progress.get("tokens_seen", 0)),
            final=final,
            deleted_steps=tuple(deleted),
        )
        self._log_saved(result)
        return result

    def _gather_checksums(self, mine: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Every rank's write-time checksums, merged on rank 0 (others get their own back)."""
        if self.world_size == 1:
            return mine
        parts: list[Any] = [None] * self.world_size if self.rank == 0 else []
        dist.gather_object(mine, parts if self.rank == 0 else None, dst=0)
        return (
            {name: entry for part in parts for name, entry in (part or {}).items()}
            if self.rank == 0
            else mine
        )

    def _save_vanilla(self, sd: dict[str, Any], tmp: Path) -> dict[str, dict[str, Any]] | None:
        blob = sd["rng"][f"rank_{self.rank}"]
        blobs = [blob]
        if self.world_size > 1:
            blobs = [None] * self.world_size if self.rank == 0 else []
            dist.gather_object(blob, blobs if self.rank == 0 else None, dst=0)
        if self.rank != 0:
            return None
        payload = {**sd, "rng": {f"rank_{r}": b for r, b in enumerate(blobs)}}
        name, size, crc = storage.vanilla_save(payload, tmp)
        return {name: {"size": size, "checksum": crc}}

    def _start_async(
        self, step: int, state: TrainState, tmp: Path, started: float, progress: dict[str, Any]
    ) -> None:
        if self._async_writer is None:
            if self.world_size > 1:
                self._save_pg = dist.new_group(backend="gloo")  # collective: all ranks are here
            self._async_writer = storage.DcpAsyncWriter(
                io_threads=self.config.io_threads, process_group=self._save_pg
            )
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyrecover-ckpt")
        assert self._executor is not None
        try:
            write = self._async_writer.start(state.state_dict(), tmp)
        except _DCP_ERRORS as e:
            raise SaveFailed(f"starting the async save of step {step} into {tmp} failed: {e}") from e
        stall = time.perf_counter() - started
        future = self._executor.submit(self._await_write, write, tmp)
        self._inflight = _InFlight(
            step=step, tmp=tmp, future=future, started=started, stall=stall, progress=progress
        )

    def _await_write(self, write: Future[Any], tmp: Path) -> dict[str, dict[str, Any]] | None:
        """Commit thread: wait for DCP's write, then (rank 0) complete the checksums. No collectives:
        other ranks' shards are read back here instead of gathering their write-time checksums."""
        write.result()
        assert self._async_writer is not None
        known = self._async_writer.take_checksums(tmp)
        return mf.checksum_files(tmp, known=known, fsync=True) if self.rank == 0 else None

    def _finish_inflight(self, *, block: bool) -> list[SaveResult]:
        inflight = self._inflight
        if inflight is None or (not block and not inflight.future.done()):
            return []
        self._inflight = None
        try:
            files = inflight.future.result()
            size, deleted = 0, list[int]()
            if self.rank == 0:
                committed, deleted = self._commit(inflight.step, inflight.tmp, files, inflight.progress)
                size = committed.manifest["size_bytes"]
        except _DCP_ERRORS as e:
            msg = f"async save of step {inflight.step} into {inflight.tmp} failed: {e}"
            log.error(msg)
            raise SaveFailed(msg) from e
        result = SaveResult(
            path=step_dir(self.config.root, self.config.run_name, inflight.step),
            step=inflight.step,
            format="dcp",
            size_bytes=size,  # only rank 0 knows the total; other ranks report 0
            save_seconds=time.perf_counter() - inflight.started,
            stall_seconds=inflight.stall,
            async_save=True,
            tokens_seen=int(inflight.progress.get("tokens_seen", 0)),
            final=False,
            deleted_steps=tuple(deleted),
        )
        self._log_saved(result)
        return [result]

    def _settle_inflight(self) -> None:
        """Wait for the save in flight; keep its result or its error for completed()/wait()."""
        try:
            self._done.extend(self._finish_inflight(block=True))
        except CheckpointError as e:
            self._errors.append(e)

    def _report(self, block: bool) -> list[SaveResult]:
        try:
            self._done.extend(self._finish_inflight(block=block))
        except CheckpointError as e:
            self._errors.append(e)
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error
        done, self._done = self._done, []
        return done

    def completed(self) -> list[SaveResult]:
        """Async saves committed since the last call; never blocks on a save still being written.

        Raises CheckpointError (once) if an async save failed; the loop may carry on training and
        save again later, since a failed save leaves only a temporary behind.
        """
        return self._report(block=False)

    def wait(self) -> list[SaveResult]:
        """Block until the save in flight (if any) is committed; return everything not yet reported."""
        return self._report(block=True)

    def close(self) -> None:
        self._settle_inflight()
        for error in self._errors:
            log.error("unreported checkpoint failure at close: %s", error)
        self._errors = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._async_writer is not None:
            self._async_writer.close()
            self._async_writer = None

    # ------------------------------------------------------------------ commit (rank 0)

    def _commit(
        self, step: int, tmp: Path, known: dict[str, dict[str, Any]] | None, progress: dict[str, Any]
    ) -> tuple[CommittedCheckpoint, list[int]]:
        """Commit ``tmp`` as ``step``, then apply retention: (the commit, the steps retention deleted)."""
        committed = commit(
            tmp,
            step_dir(self.config.root, self.config.run_name, step),
            known=known,
            world_size=self.world_size,
            fmt=self.config.format,
            run_config=self._run_config,
            progress=progress,
            attempt=self.attempt,
        )
        busy = [self._inflight.tmp] if self._inflight is not None else []
        deleted = retain(self.config, restored_step=self._restored_step, busy=busy)
        return committed, deleted

    # ------------------------------------------------------------------ restore

    def restore(
        self, state: TrainState, which: str | Path = "latest", *, allow_fresh: bool = False
    ) -> RestoreResult | None:
        """Load the newest verified checkpoint (or ``which``) into ``state``; None on a fresh start.

        With "latest" and nothing that verifies, a run directory that shows a past (quarantined or
        unverifiable checkpoints, loss rows) raises ``FreshStartRefused`` unless ``allow_fresh``.
        """
        started = time.perf_counter()
        choice: dict[str, Any] | None = None
        if self.rank == 0:
            try:
                choice = choose_checkpoint(
                    self.run_dir,
                    which,
                    run_config=self._run_config,
                    immutable_keys=self._immutable,
                    allow_fresh=allow_fresh,
                )
            except OSError as e:  # must reach the other ranks, which wait in the broadcast
                choice = {"error": f"cannot read checkpoints in {self.run_dir}: {e}"}
        choice = self._broadcast(choice)
        assert choice is not None
        found = choice.get("warnings") or ()
        if choice["error"]:
            raise CheckpointError(choice["error"], warnings=found)
        if choice.get("refused"):
            raise FreshStartRefused(choice["refused"], warnings=found)
        if choice["checkpoint"] is None:
            log.info("no committed checkpoint in %s: starting fresh", self.run_dir)
            return None
        ckpt: CommittedCheckpoint = choice["checkpoint"]
        try:
            load_into(state, ckpt, world_size=self.world_size)
        except _DCP_ERRORS as e:
            raise CheckpointError(f"loading {ckpt.path} failed: {e}") from e
        self._restored_step = ckpt.step
        warnings = [*choice["warnings"], *state.notes]
        for key, (old, new) in choice["changed"].items():
            log.info("resume note: config %s changed: %r -> %r", key, old, new)
        result = RestoreResult(
            checkpoint=ckpt,
            load_seconds=time.perf_counter() - started,
            warnings=warnings,
            changed_fields=choice["changed"],
        )
        return result  # the loop logs the resume once, on rank 0

    # ------------------------------------------------------------------ helpers

    def _refuse_non_finite(self, step: int, state: TrainState) -> None:
        """Collective: every rank checks its own tensors (its shards under FSDP), all learn the verdict.

        Before anything is written, so a refused save leaves nothing behind, not even a temporary.
        """
        finite = state.is_finite()
        verdicts: list[Any] = [finite]
        if self.world_size > 1:
            verdicts = [None] * self.world_size
            dist.all_gather_object(verdicts, finite)
        bad = [rank for rank, ok in enumerate(verdicts) if not ok]
        if bad:
            raise NonFiniteState(
                f"refusing to save step {step}: the weights or optimizer state hold NaN/inf "
                f"(rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))})"
            )

    def _broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (identity in a single process)."""
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _log_saved(self, r: SaveResult) -> None:
        log.info(
            "checkpoint step %d committed (%s%s%s): %s, %.1f MB in %.2fs, loop blocked %.2fs",
            r.step,
            r.format,
            ", async" if r.async_save else "",
            ", final" if r.final else "",
            r.path,
            r.size_bytes / 1e6,
            r.save_seconds,
            r.stall_seconds,
        )
