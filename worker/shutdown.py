"""Leaving promptly after the final checkpoint: a bounded teardown, then an exit without finalization.

Why (measured on the 2-core development machine, 2 gloo ranks, tiny model, deadline stop): after
the final checkpoint was committed, the worker's own teardown (reporter close, process-group
destroy) took under 0.05 s, yet the processes exited 3-7 s later (37 s with a debugger attached).
The time went into CPython's finalization, *after* the last atexit handler: ``Py_FinalizeEx`` →
``finalize_modules`` runs a full garbage collection over the torch / transformers / pyarrow object
graph, and it grows with machine load. Under SLURM that tail landed after the time limit and the
job ended in TIMEOUT although its checkpoint was long committed.

So the worker's process entry point (``python -m worker``) ends with ``exit_now``: atexit handlers
run (under a watchdog), logs and stdio are flushed, then ``os._exit``. Nothing durable is skipped:
the checkpoint is committed and fsynced, the reporter delivered or spooled (fsynced) its events, the
loss CSV is closed. In-process callers (tests, notebooks) call ``worker.cli.main`` and keep their
interpreter.

Every teardown step is bounded by a share of ``exit_allowance`` (what the time-aware stop reserves
before the deadline): closing the reporter, a barrier that tells every rank the others are done with
their collectives (a rank must not tear down the rendezvous store while another still uses it), and
destroying the process groups (the default one and the checkpoint's async-save group). A step that
overruns is logged and skipped; the process exits anyway.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # torch stays unimported until training starts (``--help`` is instant)
    from worker.distributed import DistInfo
    from worker.reporting import Reporter

log = logging.getLogger("pyrecover.worker")

# Shares of the exit allowance: the reporter may use up to 40 % (rank 0 only; the other ranks wait
# for it in the barrier), the barrier runs until 80 % is spent, the process-group destroy gets the
# rest (at least _MIN_STEP_S).
_REPORTER_SHARE = 0.4
_BARRIER_SHARE = 0.8
_MIN_STEP_S = 0.5
_POLL_S = 0.005


def run_bounded(fn: Callable[[], object], timeout: float, *, name: str) -> bool:
    """Run ``fn`` in a daemon thread for at most ``timeout`` seconds; True when it returned in time.

    An overrunning ``fn`` keeps running in its (daemon) thread: it cannot be cancelled, only left
    behind, and the process exit does not wait for it.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below, never raised into the teardown
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"pyrecover-exit-{name}", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if thread.is_alive():
        log.warning("exit: %s still running after %.1f s; leaving it behind", name, timeout)
        return False
    if errors:
        log.warning("exit: %s failed: %s: %s", name, type(errors[0]).__name__, errors[0])
        return False
    return True


def barrier_bounded(info: DistInfo, timeout: float) -> bool:
    """A barrier over the default group that gives up after ``timeout`` seconds (False then).

    Polls an async barrier instead of blocking in one: ``dist.barrier`` has no timeout of its own
    short of the group's (10 minutes), and a barrier left running in a helper thread would race
    with the destroy that follows.
    """
    if not info.is_distributed:
        return True
    import torch.distributed as dist

    if not dist.is_initialized():
        return True
    try:
        work = dist.barrier(async_op=True)
    except Exception as exc:
        log.warning("exit: barrier failed to start: %s: %s", type(exc).__name__, exc)
        return False
    if work is None:  # not expected with async_op=True; nothing to wait for
        return True
    end = time.monotonic() + max(timeout, 0.0)
    try:
        while not work.is_completed():
            if time.monotonic() >= end:
                log.warning("exit: the other ranks did not reach the exit barrier within %.1f s", timeout)
                return False
            time.sleep(_POLL_S)
        work.wait()  # raises if the barrier failed (a peer died)
    except Exception as exc:
        log.warning("exit: barrier failed: %s: %s", type(exc).__name__, exc)
        return False
    return True


def teardown(info: DistInfo | None, reporter: Reporter | None, *, allowance: float, agree: bool) -> bool:
    """Close the reporter, agree with the other ranks, destroy the process groups; all bounded.

    ``agree`` is False on failure paths: the other ranks may be stuck in a collective or dead, so
    there is nothing to agree on. Returns True when every step finished in time. Logs one line with
    the time each step took.
    """
    started = time.monotonic()
    end = started + allowance
    phases: list[str] = []
    clean = True

    def timed(name: str, step: Callable[[], bool]) -> bool:
        nonlocal clean
        t = time.monotonic()
        ok = step()
        clean &= ok
        phases.append(f"{name} {time.monotonic() - t:.2f}s{'' if ok else ' (cut off)'}")
        return ok

    if reporter is not None:
        reporter_timeout = max(allowance * _REPORTER_SHARE, _MIN_STEP_S)
        # close() flushes what it can within its timeout and spools the rest to disk; the thread
        # around it only guards against a close() that itself hangs (a stuck spool write).
        timed(
            "reporter",
            lambda: run_bounded(
                lambda: reporter.close(timeout=reporter_timeout), reporter_timeout + 1.0, name="reporter"
            ),
        )
    if info is not None and info.is_distributed:
        synced = True
        if agree:
            barrier_end = started + allowance * _BARRIER_SHARE
            synced = timed(
                "barrier", lambda: barrier_bounded(info, max(barrier_end - time.monotonic(), _MIN_STEP_S))
            )
        if synced:
            from worker.distributed import destroy_process_groups

            timed(
                "process groups",
                lambda: run_bounded(
                    lambda: destroy_process_groups(info),
                    max(end - time.monotonic(), _MIN_STEP_S),
                    name="process-group destroy",
                ),
            )
        else:
            # A destroy with a collective still pending on this rank can block (NCCL) or tear the
            # connection out from under a peer still in its barrier; the exit cleans up anyway.
            phases.append("process groups skipped")
    total = time.monotonic() - started
    level = logging.INFO if clean and total <= allowance else logging.WARNING
    summary = ", ".join(phases) or "nothing to do"
    log.log(level, "exit teardown: %s; %.2fs of %.1fs allowed", summary, total, allowance)
    return clean


def flush_logs() -> None:
    """Flush the root logger's handlers and stdio; a broken stream must not keep the process alive."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


def exit_now(code: int, *, grace: float = 5.0) -> NoReturn:
    """End the process with ``code`` without CPython's finalization (see the module docstring).

    Runs the atexit handlers first (torch and the standard library clean up child processes and
    flush there), bounded by ``grace`` seconds: a watchdog thread exits the process if they hang.
    Call it only once everything that must survive is on disk.
    """

    def watchdog() -> None:
        log.warning("exit: atexit handlers still running after %.1f s; exiting anyway", grace)
        flush_logs()
        os._exit(code)

    timer = threading.Timer(grace, watchdog)
    timer.daemon = True
    timer.start()
    t = time.monotonic()
    try:
        # atexit has no public "run now"; _run_exitfuncs runs and clears the handlers (so nothing
        # runs twice) and reports their exceptions itself.
        run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
        if run_exitfuncs is not None:
            run_exitfuncs()
    finally:
        elapsed = time.monotonic() - t
        if elapsed > 1.0:
            # logging.shutdown (an atexit handler) may have closed the handlers: write directly.
            print(f"pyrecover: atexit handlers took {elapsed:.1f} s", file=sys.stderr)
        flush_logs()
        os._exit(code)
