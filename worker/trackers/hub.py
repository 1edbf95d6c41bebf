"""Rank 0's trackers, fed from the progress events and kept out of training's way.

``with_trackers`` wraps the run's reporter: every ``progress`` event the loop reports also goes,
as scalars, to the configured trackers. The training thread only puts the step into a bounded
queue (never blocks: a full queue drops the step, with one warning); the trackers' own thread opens
the backends at the first step, writes the mark, then logs. A backend that cannot be imported,
opened or written to is dropped with one warning (a log line and a ``warning`` event on the run),
and training goes on: an optional sink never crashes or stalls the run.

Steps only go up (``worker.trackers.state``): a step at or below the persisted mark is not logged
again. An attempt that died after logging steps beyond its last checkpoint makes the next one
re-train them: the trackers keep what was logged first and skip the replay (resume is bit-exact,
so on the same world size the replayed losses are the same numbers; the replay's throughput is
not shown). The same holds for a run that restarts from step 0 over its own history.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from shared import envvars
from shared.events import EventType
from shared.paths import tracker_dir
from worker.reporting import Reporter

from .backends import Backend, TensorBoardBackend, WandbBackend
from .state import TrackerState, TrackerStateError
from .wandb_env import WandbEnv, prepare_wandb_env

log = logging.getLogger("pyrecover.worker.trackers")

PROGRESS_METRICS: dict[str, str] = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_seen": "train/tokens_seen",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time": "perf/step_time_s",
    "mfu": "perf/mfu",
}
"""Progress event field → tracker metric name."""
ATTEMPT_METRIC = "run/attempt"
QUEUE_SIZE = 1024


def progress_metrics(fields: Mapping[str, Any], attempt: int | None) -> dict[str, float]:
    """The scalars of one progress event (absent and non-numeric fields left out; NaN kept: it is news)."""
    out: dict[str, float] = {}
    for field, name in PROGRESS_METRICS.items():
        value = fields.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    if attempt is not None:
        out[ATTEMPT_METRIC] = float(attempt)
    return out


class Trackers:
    """The backends named in ``training.trackers`` for one attempt, on a thread of their own."""

    def __init__(
        self,
        names: tuple[str, ...],
        *,
        directory: Path,
        run_name: str,
        run_config: Mapping[str, Any],
        controller_run_id: str | None = None,
        wandb_env: WandbEnv | None = None,
        notify: Callable[[int, str], None] | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.names = names
        self.directory = directory
        self._run_name = run_name
        self._run_config = dict(run_config)
        self._controller_run_id = controller_run_id
        self._wandb_env = wandb_env
        self._notify = notify
        self._queue: queue.Queue[tuple[int, dict[str, float]]] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._dropped_warned = False
        self._last_step = 0
        self._opened = False
        self.state: TrackerState | None = None
        self.backends: list[Backend] = []
        self.skipped = 0
        """Steps not logged because an earlier attempt logged them (read after ``close``)."""
        self._thread = threading.Thread(target=self._run, name="pyrecover-trackers", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ training thread

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Hand one step's scalars over; never blocks, never raises."""
        try:
            self._queue.put_nowait((step, metrics))
        except queue.Full:
            if not self._dropped_warned:
                self._dropped_warned = True
                self._warn(step, f"trackers are {self._queue.maxsize} steps behind; dropping steps")
        except Exception:  # an optional sink must never reach the training loop
            log.exception("trackers: could not queue step %d", step)

    def close(self, timeout: float = 10.0) -> bool:
        """Log what is queued and close the backends within ``timeout`` s; False if it overran."""
        self.begin_close()
        return self.join(timeout)

    def begin_close(self) -> None:
        self._closing.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(max(timeout, 0.0))
        if self._thread.is_alive():
            log.warning("trackers: still closing after %.1f s; leaving them behind", timeout)
            return False
        return True

    # ------------------------------------------------------------------ trackers thread

    def _warn(self, step: int, message: str) -> None:
        log.warning("%s", message)
        if self._notify is not None:
            try:
                self._notify(step, message)
            except Exception:
                log.exception("trackers: could not report a warning")

    def _open(self) -> None:
        self._opened = True
        try:
            self.state = TrackerState.open(
                self.directory, run_name=self._run_name, controller_run_id=self._controller_run_id
            )
        except (TrackerStateError, OSError) as exc:
            self._warn(self._last_step, f"trackers disabled for this attempt: {exc}")
            return
        for name in self.names:
            try:
                self.backends.append(self._make(name, self.state))
            except ImportError as exc:
                self._warn(
                    self._last_step,
                    f"tracker {name}: not installed (pip install 'pyrecover[{name}]'): {exc}",
                )
            except Exception as exc:
                self._warn(self._last_step, f"tracker {name}: cannot start ({type(exc).__name__}: {exc})")
        log.info(
            "trackers: %s, run %s, logged through step %d",
            ", ".join(b.name for b in self.backends) or "none",
            self.state.run_id,
            self.state.logged_through,
        )

    def _make(self, name: str, state: TrackerState) -> Backend:
        if name == "tensorboard":
            return TensorBoardBackend(self.directory / "tensorboard")
        if name == "wandb":
            if self._wandb_env is None:
                raise RuntimeError("W&B's environment was not prepared")
            return WandbBackend(
                directory=self.directory / "wandb",
                run_id=state.run_id,
                run_name=self._run_name,
                env=self._wandb_env,
                config=self._run_config,
            )
        raise ValueError(f"unknown tracker {name!r}")

    def _handle(self, step: int, metrics: dict[str, float]) -> None:
        self._last_step = step
        if not self._opened:
            self._open()
        if self.state is None or not self.backends:
            return
        if step <= self.state.logged_through:
            if not self.skipped:
                log.info(
                    "trackers: steps up to %d were logged by an earlier attempt; not logging them again",
                    self.state.logged_through,
                )
            self.skipped += 1
            return
        try:
            self.state.advance(step)
        except OSError as exc:  # without the mark, steps could be logged twice: stop instead
            self._warn(step, f"trackers stopped: cannot record step {step} in {self.state.path}: {exc}")
            self._close_backends()
            return
        for backend in list(self.backends):
            try:
                backend.log(step, metrics)
            except Exception as exc:
                self._warn(step, f"tracker {backend.name}: stopped logging at step {step}: {exc}")
                self.backends.remove(backend)
                self._close_one(backend)

    def _run(self) -> None:
        try:
            while True:
                try:
                    step, metrics = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._closing.is_set():
                        return
                    continue
                self._handle(step, metrics)
        except Exception:
            log.exception("trackers: stopped")
        finally:
            self._close_backends()

    def _close_one(self, backend: Backend) -> None:
        try:
            backend.close()
        except Exception as exc:
            log.warning("tracker %s: close failed: %s", backend.name, exc)

    def _close_backends(self) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            self._close_one(backend)


class TrackingReporter:
    """A reporter that also logs each ``progress`` event to the trackers (rank 0 only)."""

    def __init__(self, inner: Reporter, trackers: Trackers, *, attempt: int | None = None) -> None:
        self.inner = inner
        self.trackers = trackers
        self._attempt = attempt

    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        self.inner.emit(type, step=step, **fields)
        if type == EventType.PROGRESS:
            self.trackers.log(step, progress_metrics(fields, self._attempt))

    def requested_action(self) -> Any:
        return self.inner.requested_action()

    def close(self, timeout: float = 10.0) -> None:
        """The controller's events first (they decide the run), the trackers in parallel and after."""
        started = time.monotonic()
        self.trackers.begin_close()
        self.inner.close(timeout * 0.6)
        self.trackers.join(timeout - (time.monotonic() - started))

    def __getattr__(self, name: str) -> Any:  # whatever else the wrapped reporter offers
        return getattr(self.inner, name)


def _env_int(environ: Mapping[str, str], key: str) -> str | None:
    value = environ.get(key, "")
    return value if value.isdigit() and len(value) <= 18 else None


def with_trackers(
    reporter: Reporter, config: Any, *, is_main: bool, environ: MutableMapping[str, str] = os.environ
) -> Reporter:
    """``reporter``, wrapped to feed ``config.trackers`` on rank 0 (unchanged elsewhere, or with none)."""
    names = tuple(getattr(config, "trackers", ()) or ())
    if not names or not is_main:
        return reporter
    directory = tracker_dir(Path(config.checkpoint_dir), config.experiment_name)
    wandb_env = prepare_wandb_env(environ, state_dir=directory / "wandb-env") if "wandb" in names else None
    attempt = _env_int(environ, envvars.ATTEMPT)

    def notify(step: int, message: str) -> None:
        reporter.emit(EventType.WARNING, step=step, kind="tracker", message=message[:8000])

    trackers = Trackers(
        names,
        directory=directory,
        run_name=config.experiment_name,
        run_config=config.resolved(),
        controller_run_id=_env_int(environ, envvars.RUN_ID),
        wandb_env=wandb_env,
        notify=notify,
    )
    if wandb_env is not None and wandb_env.ignored:
        ignored = ", ".join(wandb_env.ignored)
        notify(0, f"W&B: ignored {ignored} from the environment (pyrecover pins W&B's directories and run)")
    return TrackingReporter(reporter, trackers, attempt=int(attempt) if attempt else None)
