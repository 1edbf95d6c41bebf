"""A scheduler fake at the process boundary, and a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.scheduler.base import JobSpec, JobStatus, SchedulerError
from shared.states import SchedulerJobState


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeScheduler:
    """Remembers every submission; the test sets each job's state. ``refuse`` makes submit fail."""

    name: str = "local"
    supports_dependencies: bool = False
    submitted: list[JobSpec] = field(default_factory=list)
    states: dict[str, JobStatus] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    refuse: str | None = None
    by_name: dict[str, str] = field(default_factory=dict)

    def submit(self, spec: JobSpec) -> str:
        if self.refuse:
            raise SchedulerError(self.refuse)
        job_id = f"job-{len(self.submitted) + 1}"
        self.submitted.append(spec)
        self.by_name[spec.job_name] = job_id
        self.states[job_id] = JobStatus(job_id=job_id, state=SchedulerJobState.PENDING)
        return job_id

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {j: self.states.get(j, JobStatus(job_id=j, state=SchedulerJobState.LOST)) for j in job_ids}

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.states[job_id] = JobStatus(job_id=job_id, state=SchedulerJobState.CANCELLED)

    def find_by_name(self, job_name: str) -> str | None:
        return self.by_name.get(job_name)

    def set(
        self,
        job_id: str,
        state: SchedulerJobState,
        exit_code: int | None = None,
        reason: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.states[job_id] = JobStatus(
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            reason=reason,
            start_time=1_800_000_000.0,
            deadline=deadline,
        )
