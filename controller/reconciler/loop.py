"""``Reconciler``: a daemon thread that runs one reconcile pass every ``reconcile_interval_s``.

``wake()`` makes the next pass start at once (the API calls it after ``stopping``, ``finished``
and ``failed`` reports, and after a cancel). A failing pass is logged and retried on the next
tick; it never kills the loop. Passes never overlap: there is one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from controller.reconciler.ending import TickContext
from controller.reconciler.tick import reconcile_once
from controller.scheduler.base import Scheduler
from controller.scheduler.registry import make_scheduler
from controller.settings import Settings

log = logging.getLogger(__name__)


class Reconciler:
    """Owns the scheduler backends and the loop thread; every pass runs in short transactions."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: Callable[[], Session],
        schedulers: dict[str, Scheduler] | None = None,
        clock: Callable[[], float] = time.time,
        interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.interval_s = float(interval_s if interval_s is not None else settings.reconcile_interval_s)
        self._schedulers: dict[str, Scheduler] = dict(schedulers or {})
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.passes = 0
        self.last_error: str | None = None

    def scheduler(self, name: str) -> Scheduler:
        """The backend instance for ``name``, created once (it keeps per-job supervisors)."""
        with self._lock:
            if name not in self._schedulers:
                self._schedulers[name] = make_scheduler(name, self.settings)
            return self._schedulers[name]

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pyrecover-reconciler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop. Running jobs are left alone: a restarted controller adopts them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> None:
        """One full pass now, in the caller's thread (tests, and the loop itself)."""
        ctx = TickContext(
            settings=self.settings,
            session_factory=self.session_factory,
            scheduler=self.scheduler,
            now=self._clock,
            wake=self.wake,
        )
        reconcile_once(ctx)
        self.passes += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # keep the loop alive; the next pass retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconciler pass failed")
            self._wake.wait(self.interval_s)
