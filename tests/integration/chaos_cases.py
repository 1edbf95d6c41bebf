"""One trial of a fault case on the real cluster, for the chaos table.

The SLURM fault tests (node failure, preemption, hangs, divergence, report outage, corrupt
checkpoints) take the ``chaos_trial`` fixture (``tests/integration/conftest.py``): the test names
the fault and where it was injected, says what was lost and adds its figures; the fixture records
the trial through ``tests/fault/chaos.py:record`` when the test ends, survived or not (a skip
records nothing). CI runs each once; ``make chaos`` runs them ``PYRECOVER_CHAOS_REPEAT`` times
(default 3) and sums the trials in the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChaosTrial:
    fault: str = ""
    path: str = ""
    data_lost: str = "none: the run COMPLETED, final weights bit-identical to an uninterrupted run"
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def name(self, fault: str, path: str) -> None:
        self.fault, self.path = fault, path

    def record(self, passed: bool) -> None:
        from tests.fault.chaos import record

        if not self.fault:
            return
        record(
            self.fault,
            path=self.path,
            trials=1,
            survived=int(passed),
            data_lost=self.data_lost if passed else "the test failed: see its report",
            seconds=round(time.monotonic() - self.started, 1),
            **self.figures,
        )
