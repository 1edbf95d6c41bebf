"""Hang detection inside the worker: a watchdog thread per rank, and heartbeats that name the culprit.

The training loop tells the watchdog which phase it is in (``shared.events.HangPhase``: start-up,
checkpoint load, step, save) every time it makes progress. A monitor thread compares the time spent
in the current phase with what that phase is expected to take:

* a step: the p99 of this attempt's measured steps (after ``_WARMUP_STEPS`` warm-up steps);
* a save: the longest save measured so far (the loop's own saves, background writes included);
* start-up, the load, and any step or save before one was measured: ``hang_startup_seconds``.

The limit is ``max(hang_factor × expected, hang_floor_seconds)``. When it is exceeded the rank

1. logs one line and dumps every thread's stack into its log (``faulthandler``) and into
   ``<run>/.watchdog/<job>/stacks-rank<r>.txt``;
2. says so in its heartbeat, waits briefly for the other ranks to notice too, and reads their
   heartbeats to name the ranks that stalled the job (``suspects``);
3. reports ``hung`` (then ``failed``) and exits with ``ExitCode.HUNG`` at once (``os._exit``: the
   main thread is stuck, nothing committed depends on it).

**Heartbeats** (``worker.heartbeats``). A second thread writes this rank's state every few seconds;
both threads keep running while the main thread is stuck in a collective or a read. A rank that is
SIGSTOPped (or frozen, or whose node died) writes nothing: its heartbeat goes stale, and the ranks
waiting for it in a collective report it as ``not running`` with its host. A rank stuck in a data
read says ``reading data`` while the others wait in the step's first collective.

**Waiting on a busy peer is not a hang.** Rank 0 commits async saves alone (checksums, manifest,
retention) while the others wait for it at the next collective. A rank whose limit passed first
reads the heartbeats: if a peer is in another phase and still within that phase's own limit, it
waits for that peer instead of tripping.

The hooks in ``worker.loop`` and ``worker.train`` are one-liners (``enter``, ``during``,
``step_done``, ``saved``, ``reading``); with ``hang_detection`` off no thread starts and they only
set attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.events import EventType, HangPhase
from shared.exit_codes import ExitCode
from worker.heartbeats import COMPUTING, READING_DATA, HeartbeatBoard, open_job_directory, this_host

if TYPE_CHECKING:
    from worker.distributed import DistInfo

log = logging.getLogger("pyrecover.worker")

T = TypeVar("T")

_WARMUP_STEPS = 3
_STEP_WINDOW = 200
_SAVE_WINDOW = 16
_STACK_EXCERPT_CHARS = 3000
_PAUSED_AFTER_S = 2.0


@dataclass(frozen=True, kw_only=True)
class WatchdogConfig:
    enabled: bool = True
    factor: float = 3.0
    floor: float = 60.0
    startup: float = 900.0
    """The limit of start-up, the load, and of steps and saves before one was measured."""
    exit_allowance: float = 5.0
    """What the reporter may take to deliver ``hung`` before the process exits."""

    @property
    def heartbeat_interval(self) -> float:
        return min(max(self.floor / 6.0, 0.5), 10.0)

    @property
    def stale_after(self) -> float:
        """A heartbeat older than this means the rank is not running; always below the floor, so a
        stopped rank looks stale by the time anyone trips."""
        return min(3.0 * self.heartbeat_interval + 1.0, 0.8 * self.floor)

    @property
    def poll(self) -> float:
        return min(max(self.floor / 10.0, 0.1), 1.0)

    @property
    def grace(self) -> float:
        """How long a tripped rank waits for the others to trip too before it exits (a rank that
        exits first breaks its peers' collectives, and they would report a plain failure)."""
        return min(max(2.0 * self.poll + self.heartbeat_interval, 2.0), 15.0)


def _p99(samples: deque[float]) -> float:
    ordered = sorted(samples)
    pos = 0.99 * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Watchdog:
    """One per rank (see the module docstring). ``start`` after the process group exists."""

    def __init__(
        self,
        config: WatchdogConfig,
        *,
        rank: int,
        world_size: int,
        directory: Path,
        reporter: Any = None,
        make_reporter: Callable[[], Any] | None = None,
        host: str | None = None,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.directory = directory
        self.reporter = reporter
        """Rank 0's reporter (the loop's); other ranks report only when rank 0 is not running."""
        self._make_reporter = make_reporter
        self.host = host or this_host()
        self._exit = exit
        self.board = HeartbeatBoard(
            directory, rank=rank, world_size=world_size, stale_after=config.stale_after
        )
        # Written by the main thread, read by the watchdog threads: single attribute stores.
        self.phase = HangPhase.STARTUP
        self.step = 0
        self.doing = ""
        self._since = time.monotonic()
        self._since_wall = time.time()
        self._resumed = float("-inf")
        """When the monitor last found this whole process had been stopped (monitor thread only)."""
        self._step_started: float | None = None
        self._steps: deque[float] = deque(maxlen=_STEP_WINDOW)
        self._seen_steps = 0
        self._saves: deque[float] = deque(maxlen=_SAVE_WINDOW)
        self.tripped = False
        self.reported = False  # this rank sent ``hung``: no peer reports the same hang again
        self.created_run_dir = False
        """Rank 0: this attempt's watchdog created the run directory (a failed start removes it)."""
        self._stop = threading.Event()
        self._exited = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deferring_to: int | None = None

    # --- the loop's hooks (main thread; cheap) -------------------------------------------------
    def enter(self, phase: HangPhase, step: int | None = None) -> None:
        """Progress: the loop is now in ``phase`` (at ``step``)."""
        now = time.monotonic()
        if phase is HangPhase.STEP:
            self._step_started = now
        # The times first: a monitor reading between these stores sees a fresh start, never an old
        # start against a new (shorter) phase limit.
        self._since, self._since_wall = now, time.time()
        if step is not None:
            self.step = step
        self.doing = ""
        self.phase = phase

    @contextlib.contextmanager
    def during(self, phase: HangPhase, *, measure: bool = False) -> Iterator[None]:
        """``phase`` for the duration of the block, then back to the phase before (as progress).

        ``measure``: the block is a whole save, and its duration sets the limit of later saves (a
        block that only polls for a background save must not: it takes no time)."""
        before = self.phase
        started = time.monotonic()
        self.enter(phase)
        try:
            yield
        finally:
            if measure:
                self._saves.append(time.monotonic() - started)
            self.enter(before)

    def step_done(self) -> None:
        """The step that ``enter(STEP)`` opened reached its boundary: record its duration."""
        if self._step_started is None:
            return
        seconds = time.monotonic() - self._step_started
        self._step_started = None
        self._seen_steps += 1
        if self._seen_steps > _WARMUP_STEPS:
            self._steps.append(seconds)
        self._since = time.monotonic()

    def saved(self, seconds: float) -> None:
        """A save's full duration as the checkpoint manager measured it (async writes included)."""
        if math.isfinite(seconds) and seconds >= 0:
            self._saves.append(seconds)

    def reading(self, batches: Iterator[T]) -> Iterator[T]:
        """Wrap the batch iterator: mark the data read, so a rank stuck in it can be told apart."""
        while True:
            self.doing = READING_DATA
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.doing = COMPUTING
            yield batch

    # --- limits --------------------------------------------------------------------------------
    def limit(self, phase: HangPhase | None = None) -> float:
        """Seconds the phase may run without progress before it counts as hung."""
        phase = self.phase if phase is None else phase
        cfg = self.config
        if phase is HangPhase.STEP and self._steps:
            expected: float | None = _p99(self._steps)
        elif phase is HangPhase.SAVE and self._saves:
            expected = max(self._saves)
        else:
            expected = None
        if expected is None:
            return max(cfg.startup, cfg.floor)
        return max(cfg.factor * expected, cfg.floor)

    def stalled_for(self) -> float:
        """Seconds without progress, not counting any time before this process was last resumed."""
        return time.monotonic() - max(self._since, self._resumed)

    def _note_pause(self, waited: float) -> None:
        """The monitor's wait of ``poll`` took ``waited`` seconds. Far longer means the whole process
        was stopped (SIGSTOP and SIGCONT, a suspended job, a paused machine): every thread was, the
        main one too, so that time says nothing about a hang and the stall clock restarts. Ranks that
        kept running saw this one's heartbeat go stale and judge it as a stopped rank. At least
        ``_PAUSED_AFTER_S`` late: a thread scheduled late on a busy machine is not a stopped process."""
        if waited - self.config.poll > max(self.config.stale_after, _PAUSED_AFTER_S):
            self._resumed = time.monotonic()
            log.warning("watchdog: this process was stopped for %.0f s; its stall clock restarts", waited)

    # --- threads -------------------------------------------------------------------------------
    def start(self) -> Watchdog:
        if not self.config.enabled:
            return self
        for target, name in ((self._heartbeats, "heartbeat"), (self._monitor, "monitor")):
            t = threading.Thread(target=target, name=f"pyrecover-watchdog-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop both threads; with ``remove`` delete this rank's heartbeat (nothing hung)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []
        if remove and self.config.enabled:
            self.board.remove()

    def close(self, *, keep: bool) -> None:
        """End of the attempt: with ``keep`` (a hang) every heartbeat and stack dump stays as
        evidence; otherwise rank 0 removes the job's directory (and ``.watchdog`` when empty)."""
        self.stop(remove=not keep)
        if keep or self.rank != 0 or not self.config.enabled:
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.parent.rmdir()

    def _heartbeats(self) -> None:
        while not self._stop.is_set():
            self.write_heartbeat()
            self._stop.wait(self.config.heartbeat_interval)

    def _monitor(self) -> None:
        while True:
            before = time.monotonic()
            if self._stop.wait(self.config.poll):
                return
            self._note_pause(time.monotonic() - before)
            if self.stalled_for() <= self.limit():
                self._deferring_to = None
                continue
            # The file system may be what stalls: a read that does not return tells nothing.
            peers: dict[int, dict[str, Any]] = bounded(
                self.board.read_others, self.config.poll * 5, default={}
            )
            if self.stalled_for() <= self.limit():
                continue  # progress while we were reading
            busy = self.board.busy_peer(peers, phase=self.phase, step=self.step)
            if busy is not None:
                if self._deferring_to != busy:
                    self._deferring_to = busy
                    log.info(
                        "watchdog: %s for %.0f s, past its limit, but rank %d is busy within its own "
                        "limit (%s); waiting for it",
                        self.phase.value,
                        self.stalled_for(),
                        busy,
                        peers[busy].get("phase"),
                    )
                continue
            self.trip()
            return

    # --- heartbeats (worker.heartbeats) --------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "host": self.host,
            "pid": os.getpid(),
            "phase": self.phase.value,
            "step": self.step,
            "doing": self.doing,
            "since": self._since_wall,
            "limit": self.limit(),
            "hung": self.tripped,
            "reported": self.reported,
            "written_at": time.time(),
        }

    def write_heartbeat(self) -> None:
        self.board.write(self.heartbeat())

    # --- tripping ------------------------------------------------------------------------------
    def trip(self) -> None:
        """Dump, diagnose, report, exit (monitor thread). The work runs in a helper thread with a
        deadline, so a stalled file system or controller can delay the exit but never prevent it."""
        self.tripped = True
        worker = threading.Thread(target=self._trip_work, name="pyrecover-watchdog-trip", daemon=True)
        worker.start()
        worker.join(self.config.grace + self.config.exit_allowance + 10.0)
        if worker.is_alive():
            log.error("watchdog: reporting the hang did not finish in time; exiting anyway")
        bounded(_flush, 2.0, default=None)
        self._exit(int(ExitCode.HUNG))
        self._exited.set()  # reached only when ``exit`` returns (tests)

    def _trip_work(self) -> None:
        stalled, limit, phase = self.stalled_for(), self.limit(), self.phase
        log.error(
            "watchdog: no progress in %s (step %d%s) for %.1f s, limit %.1f s; dumping every thread's stack",
            phase.value,
            self.step,
            f", {self.doing}" if self.doing else "",
            stalled,
            limit,
        )
        stacks_path, excerpt = self.dump_stacks()
        self.write_heartbeat()
        peers = self._await_peers()
        self.report(phase=phase, stalled=stalled, limit=limit, peers=peers, stacks=(stacks_path, excerpt))

    def dump_stacks(self) -> tuple[Path | None, str]:
        """Every thread's stack into stderr (the attempt's log) and into a file; (file, first lines)."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        path = self.directory / f"stacks-rank{self.rank}.txt"
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(
                    f"rank {self.rank} on {self.host}, pid {os.getpid()}: no progress in "
                    f"{self.phase.value} at step {self.step} for {self.stalled_for():.1f} s\n"
                )
                fh.flush()
                faulthandler.dump_traceback(file=fh, all_threads=True)
            excerpt = path.read_text(encoding="utf-8", errors="replace")[:_STACK_EXCERPT_CHARS]
        except OSError as exc:
            log.warning("watchdog: could not write the stack dump to %s: %s", path, exc)
            return None, ""
        return path, excerpt

    def _await_peers(self) -> dict[int, dict[str, Any]]:
        """Wait (at most ``grace``) until every other rank has tripped too or is not running."""
        end = time.monotonic() + self.config.grace
        while True:
            peers: dict[int, dict[str, Any]] = bounded(
                self.board.read_others, self.config.poll * 5, default={}
            )
            if not self.board.pending(peers) or time.monotonic() >= end:
                return peers
            time.sleep(self.config.poll)

    def report(
        self,
        *,
        phase: HangPhase,
        stalled: float,
        limit: float,
        peers: dict[int, dict[str, Any]],
        stacks: tuple[Path | None, str],
        close: bool = True,
    ) -> None:
        """Emit ``hung`` + ``failed`` if this rank is the one to report (``close``: and flush it within
        the exit allowance: the process exits right after)."""
        suspects = self.board.suspects(self.heartbeat(), peers)
        named = ", ".join(f"rank {s['rank']} on {s['host']} ({s['reason']})" for s in suspects)
        if named:
            culprit = f"stalled by {named}"
        elif self.world_size > 1:
            culprit = "every rank waits on another (a deadlock: compare their stacks)"
        else:
            culprit = "its stack dump shows where it is stuck"
        message = (
            f"hung: no progress in {phase.value} at step {self.step} for {stalled:.0f} s "
            f"(limit {limit:.0f} s); {culprit}"
        )
        reported = self.board.reported_by(peers)
        if reported is not None:
            # A rank resumed after the job already ended (a SIGSTOPped rank that SLURM wakes to kill):
            # the hang it finds was its own, and the rank that waited on it said so.
            log.error("watchdog: rank %d already reported this hang; not reporting it again", reported)
            return
        log.error("watchdog: %s", message)
        if self.board.reporting_rank(peers) != self.rank:
            return
        reporter = self.reporter if self.rank == 0 else None
        if reporter is None and self._make_reporter is not None:
            reporter = self._make_reporter()
        if reporter is None:
            return
        reporter.emit(
            EventType.HUNG,
            step=self.step,
            phase=phase.value,
            rank=self.rank,
            host=self.host,
            stalled_seconds=round(stalled, 3),
            limit_seconds=round(limit, 3),
            suspects=suspects,
            stacks_path=str(stacks[0]) if stacks[0] is not None else None,
            stacks_excerpt=stacks[1],
        )
        reporter.emit(EventType.FAILED, step=self.step, error=message[:8000])
        self.reported = True
        self.write_heartbeat()
        if close:
            with contextlib.suppress(Exception):
                reporter.close(timeout=max(self.config.exit_allowance * 0.8, 0.5))

    def hold(self) -> None:
        """The main thread, after this watchdog tripped: wait for it to end the process instead of
        racing it with an exit code of our own (a peer's exit breaks our collectives meanwhile)."""
        self._exited.wait(self.config.grace + self.config.exit_allowance + 15.0)

    def on_failure(self) -> bool:
        """Called when the main thread failed (a peer's exit broke a collective): True when a peer
        had declared a hang, after reporting it from here as ``trip`` would have."""
        if not self.config.enabled or self.tripped or self.world_size == 1:
            return False
        peers: dict[int, dict[str, Any]] = bounded(self.board.read_others, 5.0, default={})
        if not any(b.get("hung") for b in peers.values()):
            return False
        self.tripped = True
        self.stop(remove=False)
        log.error("watchdog: a peer declared a hang; the failure above is its consequence")
        self.write_heartbeat()
        self.report(
            phase=self.phase,
            stalled=self.stalled_for(),
            limit=self.limit(),
            peers=peers,
            stacks=(None, ""),
            close=False,  # the teardown that follows closes the reporter
        )
        return True


def bounded(fn: Callable[[], T], timeout: float, *, default: T) -> T:
    """``fn()`` run in a daemon thread for at most ``timeout`` seconds; ``default`` when it did not
    return in time or raised (a blocked file-system call cannot be cancelled, only left behind)."""
    box: list[T] = []

    def target() -> None:
        with contextlib.suppress(Exception):
            box.append(fn())

    t = threading.Thread(target=target, name="pyrecover-watchdog-io", daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else default


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def open_watchdog(config: WatchdogConfig, *, info: DistInfo, run_dir: Path, reporter: Any) -> Watchdog:
    """Collective: the job's heartbeat directory (``worker.heartbeats.open_job_directory``), then every
    rank's watchdog, started. If the directory cannot be made, hang detection is off (logged)."""
    directory, created_run_dir = open_job_directory(run_dir, info=info, enabled=config.enabled)
    if directory is None:
        config = dataclasses.replace(config, enabled=False)

    def one_shot_reporter() -> Any:
        from worker.reporting import make_reporter

        return make_reporter(rank=0)

    watchdog = Watchdog(
        config,
        rank=info.rank,
        world_size=info.world_size,
        directory=directory or run_dir,
        reporter=reporter if info.rank == 0 else None,
        make_reporter=one_shot_reporter,
    )
    watchdog.created_run_dir = created_run_dir
    return watchdog.start()
