"""A run's exclusion list: the hosts its next attempts keep off, and what that leaves to run on.

A host joins the list (``NodeExclusion`` rows, one per run and host) when an attempt ends

* ``node_fail``: the job's nodes (the scheduler's ``NodeList``) that the scheduler now reports
  unusable; every node of the job where it cannot say which;
* ``hung`` or ``failed``: the hosts of the suspects a ``hung`` event names (none for a deadlock,
  where every rank waits on every other), and the ``host`` a ``failed`` event carries (a CUDA/NCCL
  fault the worker pins on its machine, ``shared.exclusions``).

A host a worker names is believed only if it is one of the job's own nodes where the scheduler
says which those were: a worker cannot keep its run off machines it never ran on. Every host must
look like a host name (``HOST_RE``) before it is stored or rendered.

Entries expire ``policy.exclude_node_seconds`` after the fault (0: nothing is ever excluded); an
admin clears them (``DELETE /api/v1/runs/{id}/exclusions``). ``plan_nodes`` says how many nodes
the next attempt asks for: ``resources.nodes``, or fewer down to ``policy.min_nodes`` when the
exclusions leave too few usable nodes in the partition, or none (wait, with the reason).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import Attempt, Event, NodeExclusion, Run, WorkerEventRecord
from controller.reconciler import store
from controller.scheduler.base import JobStatus, NodeInventory, Scheduler, SchedulerError
from controller.services.exclusions import active_exclusions
from shared.events import EventType
from shared.exclusions import ExclusionReason
from shared.schemas import PolicySpec, ResourcesSpec, RunCreate, TrainingSpec
from shared.states import EndReason

log = logging.getLogger(__name__)

BLAMING_REASONS = frozenset({EndReason.NODE_FAIL, EndReason.HUNG, EndReason.FAILED})
"""End reasons that may put hosts on the list (``failed`` only with a host-pinned event)."""

HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$", re.ASCII)
"""A host name as SLURM node names and DNS labels spell them: safe on an ``#SBATCH`` line."""

MAX_HOSTS_PER_END = 64
"""At most this many hosts join the list from one attempt's end (a job's node list is bounded,
a worker's claims must be)."""

UNUSABLE_NODE_STATES = frozenset(
    {"down", "drained", "draining", "drain", "fail", "failing", "maint", "unknown", "inval", "future"}
)
"""Node states (sinfo ``%T``, lower case, flags stripped) a job cannot start on."""


def _at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


_HOSTLIST_PART = re.compile(r"([^,\[]+(?:\[[^\]]*\][^,\[]*)*)")


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list (``vm-[1-3,5],gpu01``) as host names, in order, without repeats.

    Anything that does not expand to valid host names is left out: the list comes from outside.
    """
    hosts: list[str] = []
    for match in _HOSTLIST_PART.finditer(text.strip()):
        for host in _expand_one(match.group(1)):
            if HOST_RE.fullmatch(host) and host not in hosts:
                hosts.append(host)
    return hosts


def _expand_one(pattern: str) -> list[str]:
    start = pattern.find("[")
    if start < 0:
        return [pattern]
    end = pattern.find("]", start)
    if end < 0:
        return []
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    out: list[str] = []
    for item in body.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return []
        stop = int(high) if high else int(low)
        if stop - int(low) > 4096:
            return []
        width = len(low)
        for number in range(int(low), stop + 1):
            out += [f"{head}{number:0{width}d}{rest}" for rest in _expand_one(tail)]
    return out


def node_state_usable(state: str) -> bool:
    """Whether a node in sinfo state ``state`` (``idle``, ``mixed``, ``down*``, ``drained``) takes jobs.

    A trailing ``*`` means the node does not respond: unusable whatever its state says.
    """
    text = state.strip().lower()
    if text.endswith("*"):
        return False
    base = text.rstrip("~#!%$@^-+")
    return bool(base) and base not in UNUSABLE_NODE_STATES


def _worker_claims(session: Session, run_id: int, number: int) -> list[tuple[ExclusionReason, str]]:
    """The hosts the attempt's ``hung`` and host-pinned ``failed`` events name."""
    rows = session.scalars(
        select(WorkerEventRecord)
        .where(
            WorkerEventRecord.run_id == run_id,
            WorkerEventRecord.attempt == number,
            WorkerEventRecord.type.in_([EventType.HUNG.value, EventType.FAILED.value]),
        )
        .order_by(WorkerEventRecord.seq)
    )
    out: list[tuple[ExclusionReason, str]] = []
    for row in rows:
        payload = row.payload or {}
        if row.type == EventType.HUNG.value:
            for suspect in payload.get("suspects") or []:
                if isinstance(suspect, dict) and isinstance(suspect.get("host"), str):
                    out.append((ExclusionReason.HUNG, suspect["host"]))
        elif isinstance(payload.get("host"), str):
            out.append((ExclusionReason.WORKER_PINNED, payload["host"]))
    return out


def hosts_to_exclude(
    session: Session,
    attempt: Attempt,
    reason: EndReason,
    status: JobStatus,
    node_states: Mapping[str, str] | None,
) -> list[tuple[ExclusionReason, str]]:
    """The (reason, host) pairs the end of ``attempt`` puts on the list, bounded and checked.

    ``node_states``: the scheduler's current node states (``None``: it cannot tell), used to narrow
    a node failure to the nodes that actually went down.
    """
    job_nodes = expand_hostlist(status.extra.get("NodeList", ""))
    found: list[tuple[ExclusionReason, str]] = []
    if reason is EndReason.NODE_FAIL:
        down = [
            h for h in job_nodes if node_states is not None and not node_state_usable(node_states.get(h, ""))
        ]
        found += [(ExclusionReason.NODE_FAIL, h) for h in (down or job_nodes)]
    if reason in (EndReason.HUNG, EndReason.FAILED):
        # Either reason: a watchdog's ``hung`` is followed by ``failed``, so an attempt ends one or
        # the other depending on what the controller made of the exit.
        for why, host in _worker_claims(session, attempt.run_id, attempt.number):
            # A worker's word about a host counts only for the job's own nodes, when those are known.
            if HOST_RE.fullmatch(host) and (not job_nodes or host in job_nodes):
                found.append((why, host))
    unique: dict[str, ExclusionReason] = {}
    for why, host in found:
        unique.setdefault(host, why)
    return [(why, host) for host, why in unique.items()][:MAX_HOSTS_PER_END]


def record(
    session: Session,
    run: Run,
    attempt_number: int,
    entries: Iterable[tuple[ExclusionReason, str]],
    policy: PolicySpec,
    now: float,
) -> list[str]:
    """Put ``entries`` on the run's list until ``now + policy.exclude_node_seconds``; returns the hosts.

    A host already listed gets the new reason, attempt and expiry. Nothing is stored when the
    policy excludes nothing (``exclude_node_seconds == 0``).
    """
    if policy.exclude_node_seconds <= 0:
        return []
    created = _at(now)
    expires = created + timedelta(seconds=policy.exclude_node_seconds)
    hosts: list[str] = []
    for why, host in entries:
        row = session.scalar(
            select(NodeExclusion).where(NodeExclusion.run_id == run.id, NodeExclusion.host == host)
        )
        if row is None:
            row = NodeExclusion(run_id=run.id, host=host)
            session.add(row)
        row.reason, row.attempt, row.created_at, row.expires_at = why.value, attempt_number, created, expires
        hosts.append(host)
    session.flush()
    return hosts


def active(session: Session, run_id: int, now: float) -> Sequence[NodeExclusion]:
    """The run's entries that have not expired at ``now`` (unix seconds), by host."""
    return active_exclusions(session, run_id, now=_at(now))


def active_hosts(session: Session, run_id: int, now: float) -> list[str]:
    return [row.host for row in active(session, run_id, now)]


@dataclass(frozen=True)
class NodePlan:
    """What the next attempt asks for: ``nodes`` to run on, or ``None`` and why it waits."""

    nodes: int | None
    wait_reason: str = ""


def plan_nodes(
    resources: ResourcesSpec,
    training: TrainingSpec,
    policy: PolicySpec,
    excluded: Sequence[str],
    node_states: Mapping[str, str] | None,
) -> NodePlan:
    """How many nodes the next attempt asks for, given the exclusions and the partition's nodes.

    Without exclusions, or where the scheduler cannot list the partition's nodes (``None``), the
    run asks for ``resources.nodes`` as always. Otherwise it counts the partition's usable nodes
    not excluded; with too few it shrinks to the largest count down to ``policy.min_nodes`` whose
    world size still divides the batch (``batch_size`` per optimizer step stays what the user
    asked; the data cursor survives the change), or waits.
    """
    wanted = resources.nodes
    if not excluded or node_states is None:
        return NodePlan(wanted)
    usable = sorted(h for h, state in node_states.items() if node_state_usable(state) and h not in excluded)
    if len(usable) >= wanted:
        return NodePlan(wanted)
    have = f"{len(usable)} usable node(s) left after excluding {', '.join(excluded)}"
    if policy.min_nodes is None:
        return NodePlan(None, f"waiting for nodes: {have}, the run needs {wanted} (policy.min_nodes unset)")
    per_step = resources.ntasks_per_node * training.gradient_accumulation_steps
    for nodes in range(min(len(usable), wanted), policy.min_nodes - 1, -1):
        if nodes >= 1 and training.batch_size % (nodes * per_step) == 0:
            return NodePlan(nodes)
    return NodePlan(
        None,
        f"waiting for nodes: {have}; no node count from policy.min_nodes ({policy.min_nodes}) up "
        f"divides batch_size {training.batch_size} by its ranks",
    )


WAIT_RECHECK_SECONDS = 60.0
"""How often a run waiting for nodes looks again (an entry may expire, a node may come back)."""

WAITING_EVENT = "waiting_for_nodes"
EXCLUDED_EVENT = "nodes_excluded"
SHRUNK_EVENT = "nodes_shrunk"


def inventory(scheduler: Scheduler, partition: str | None) -> dict[str, str] | None:
    """The scheduler's node states for ``partition``, or ``None`` where it cannot tell."""
    if not isinstance(scheduler, NodeInventory):
        return None
    try:
        return scheduler.node_states(partition)
    except SchedulerError as exc:
        log.warning("cannot list the nodes of partition %s: %s", partition or "(default)", exc)
        return None


def note_end(
    session: Session,
    run: Run,
    attempt: Attempt,
    reason: EndReason,
    status: JobStatus,
    spec: RunCreate,
    scheduler: Scheduler,
    now: float,
) -> list[str]:
    """Put the hosts the end of ``attempt`` blames on the run's list, with an event; returns them."""
    if reason not in BLAMING_REASONS or spec.policy.exclude_node_seconds <= 0:
        return []
    states = inventory(scheduler, spec.resources.partition) if reason is EndReason.NODE_FAIL else None
    entries = hosts_to_exclude(session, attempt, reason, status, states)
    hosts = record(session, run, attempt.number, entries, spec.policy, now)
    if hosts:
        hours = spec.policy.exclude_node_seconds / 3600
        store.record_event(
            session,
            run,
            EXCLUDED_EVENT,
            f"attempt {attempt.number} ended {reason.value}: the next attempts exclude "
            f"{', '.join(hosts)} for {hours:g} h",
        )
    return hosts


def wait_for_nodes(session: Session, run: Run, plan: NodePlan, now: float) -> None:
    """Hold a run whose exclusions leave too few nodes: look again later, say why once."""
    run.next_submit_at = _at(now + WAIT_RECHECK_SECONDS)
    last = session.scalar(
        select(Event.message)
        .where(Event.run_id == run.id, Event.kind.in_([WAITING_EVENT, EXCLUDED_EVENT]))
        .order_by(Event.id.desc())
        .limit(1)
    )
    if last != plan.wait_reason:
        store.record_event(session, run, WAITING_EVENT, plan.wait_reason)


def next_attempt_nodes(
    session: Session, run: Run, spec: RunCreate, scheduler: Scheduler, now: float
) -> tuple[list[str], NodePlan]:
    """The hosts the next attempt excludes and the nodes it asks for (``plan_nodes``)."""
    excluded = active_hosts(session, run.id, now)
    if not excluded:
        return excluded, NodePlan(spec.resources.nodes)
    states = inventory(scheduler, spec.resources.partition)
    return excluded, plan_nodes(spec.resources, spec.training, spec.policy, excluded, states)
