"""Step-range profiling: torch.profiler traces, plus nsys ranges on GPU.

Between ``--profile-step-start`` and ``--profile-step-end`` (inclusive) every step runs under
``torch.profiler``; on GPU the window is also bracketed by ``cudaProfilerStart/Stop`` and each step
gets an NVTX range, so ``nsys profile --capture-range=cudaProfilerApi`` records exactly that window.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import TracebackType

import torch

log = logging.getLogger("pyrecover.worker")


class StepProfiler:
    """``before_step(step)`` / ``after_step(step)`` around each optimizer step; ``close()`` at the end."""

    def __init__(
        self, *, enabled: bool, start: int, end: int, out_dir: Path, rank: int, device: torch.device
    ):
        self.enabled = enabled
        self._start, self._end = start, end
        self._out_dir = out_dir
        self._rank = rank
        self._cuda = device.type == "cuda"
        self._prof: torch.profiler.profile | None = None
        self._nvtx: contextlib.AbstractContextManager[object] | None = None

    def before_step(self, step: int) -> None:
        if not self.enabled:
            return
        if step == self._start and self._prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self._cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.profiler.start()
                self._nvtx = torch.autograd.profiler.emit_nvtx()
                self._nvtx.__enter__()
            self._prof = torch.profiler.profile(activities=activities, record_shapes=True)
            self._prof.__enter__()
            log.info("profiling steps %d-%d", self._start, self._end)
        if self._cuda and self._start <= step <= self._end:
            torch.cuda.nvtx.range_push(f"step {step}")

    def after_step(self, step: int) -> None:
        if not self.enabled:
            return
        if self._cuda and self._start <= step <= self._end:
            torch.cuda.nvtx.range_pop()
        if step >= self._end and self._prof is not None:
            self._finish()

    def _finish(self) -> None:
        assert self._prof is not None
        self._prof.__exit__(None, None, None)
        if self._nvtx is not None:
            self._nvtx.__exit__(None, None, None)
            self._nvtx = None
            torch.cuda.profiler.stop()
        self._out_dir.mkdir(parents=True, exist_ok=True)
        trace = self._out_dir / f"trace-rank{self._rank}-steps{self._start}-{self._end}.json"
        self._prof.export_chrome_trace(str(trace))
        log.info("profiler trace written to %s", trace)
        self._prof = None

    def close(self) -> None:
        """Flush a window that the run left early (stop or end before profile_step_end)."""
        if self._prof is not None:
            self._finish()

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
