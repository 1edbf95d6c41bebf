"""``HttpReporter``: rank 0's events to ``POST /api/v1/runs/{id}/reports``, without ever slowing training.

How it behaves (the contract ``worker.reporting.Reporter`` states):

* ``emit`` stamps ``seq`` and ``time`` and appends to an in-memory queue; it never blocks on the
  network and never raises. The queue is bounded: when it is full the oldest *progress* event is
  dropped; lifecycle and checkpoint events are never dropped.
* A daemon thread sends the queue in batches, retrying with exponential backoff and jitter. While
  the controller is unreachable, undelivered events are appended to a JSONL spool file (one per
  attempt, in the spool directory) and delivered, oldest first, once it answers again. A new
  reporter delivers spools left by earlier attempts (or an earlier process) before anything else.
* ``seq`` increases per attempt and never repeats, even across processes: the next free value is
  reserved on disk in blocks, so a restarted worker continues above anything already sent. The
  controller stores an event at most once per (run, attempt, seq), so re-delivery is harmless.
* The reply's ``action`` ("checkpoint"/"stop") is kept for ``requested_action()``.
* ``close(timeout)`` flushes what it can, spools the rest, and stops the thread.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from shared import envvars
from shared.events import DROPPABLE_EVENT_TYPES, EventType, WorkerAction
from shared.schemas import ReportReply, WorkerEvent

log = logging.getLogger(__name__)
# httpx logs every request at INFO: one line per batch would drown the training log.
logging.getLogger("httpx").setLevel(logging.WARNING)

_EVENT_ADAPTER: TypeAdapter[WorkerEvent] = TypeAdapter(WorkerEvent)
_SEQ_BLOCK = 1000


class HttpReporter:
    """Batched, retrying, spooling reporter (see the module docstring)."""

    def __init__(
        self,
        *,
        url: str,
        run_id: int,
        attempt: int,
        token_file: Path,
        spool_dir: Path | None = None,
        batch_size: int = 200,
        flush_interval: float = 0.5,
        max_queue: int = 10_000,
        request_timeout: float = 5.0,
        max_backoff: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = f"{url.rstrip('/')}/api/v1/runs/{run_id}/reports"
        self.run_id = run_id
        self.attempt = attempt
        self.token_file = Path(token_file)
        self.spool_dir = Path(spool_dir) if spool_dir else self.token_file.parent
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_backoff = max_backoff
        self.dropped = 0
        self.delivered = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._spool_lock = threading.Lock()
        self._closing = False
        self._sending: list[dict[str, Any]] = []  # the batch the thread holds outside the queue
        self._action = WorkerAction.NONE
        self._failures = 0
        self._retry_at = 0.0
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._seq_file = self.spool_dir / f"seq-a{attempt:04d}"
        self._next_seq = self._reserve_from(self._read_seq_mark())
        self._client = httpx.Client(timeout=request_timeout, transport=transport)
        self._thread = threading.Thread(target=self._run, name="pyrecover-reporter", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, **kwargs: Any) -> HttpReporter:
        """Build from ``PYRECOVER_CONTROLLER_URL / RUN_ID / ATTEMPT / TOKEN_FILE / SPOOL_DIR``."""
        env = os.environ
        spool = env.get(envvars.SPOOL_DIR)
        return cls(
            url=env[envvars.CONTROLLER_URL],
            run_id=int(env[envvars.RUN_ID]),
            attempt=int(env.get(envvars.ATTEMPT, "1")),
            token_file=Path(env[envvars.TOKEN_FILE]),
            spool_dir=Path(spool) if spool else None,
            **kwargs,
        )

    # ------------------------------------------------------------------ Reporter protocol
    def emit(self, type: EventType, *, step: int, **fields: Any) -> None:
        try:
            with self._cond:
                event = {
                    "type": str(type),
                    "seq": self._take_seq(),
                    "time": time.time(),
                    "step": step,
                    **fields,
                }
                self._queue.append(event)
                if len(self._queue) > self.max_queue:
                    self._drop_oldest_progress()
                if type not in DROPPABLE_EVENT_TYPES:
                    self._cond.notify()  # lifecycle events go out at once (the reconciler waits on them)
        except Exception:  # never let reporting crash training
            log.exception("reporter: could not queue a %s event", type)

    def requested_action(self) -> WorkerAction:
        with self._cond:
            action, self._action = self._action, WorkerAction.NONE
            return action

    def close(self, timeout: float = 10.0) -> None:
        """Flush for at most ``timeout`` seconds, then spool (fsynced) whatever is not delivered.

        Bounded even when the thread is stuck in a request: the batch it holds is spooled too (the
        controller stores each (attempt, seq) once, so a late delivery of it as well is harmless).
        The process may exit right after this returns.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(max(timeout, 0.0))
        stuck = self._thread.is_alive()
        with self._cond:
            leftover = (list(self._sending) if stuck else []) + list(self._queue)
            self._queue.clear()
        if leftover:  # the thread is stuck or the controller is down: keep them for later
            self._spool(leftover)
        if not stuck:
            self._client.close()

    # ------------------------------------------------------------------ seq
    def _read_seq_mark(self) -> int:
        try:
            return int(self._seq_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _reserve_from(self, start: int) -> int:
        """Persist ``start + block`` as the next process's first seq; return ``start``."""
        self._seq_limit = start + _SEQ_BLOCK
        tmp = self._seq_file.with_name(self._seq_file.name + ".tmp")
        tmp.write_text(str(self._seq_limit))
        os.replace(tmp, self._seq_file)
        return start

    def _take_seq(self) -> int:
        if self._next_seq >= self._seq_limit:
            self._reserve_from(self._next_seq)
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _drop_oldest_progress(self) -> None:
        for i, event in enumerate(self._queue):
            if event["type"] in DROPPABLE_EVENT_TYPES:
                del self._queue[i]
                self.dropped += 1
                return

    # ------------------------------------------------------------------ sending thread
    def _run(self) -> None:
        self._deliver_spools()
        while True:
            with self._cond:
                if not self._closing and (not self._queue or self._failures):
                    self._cond.wait(self.flush_interval)
                closing = self._closing
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                self._sending = batch
            try:
                self._step(batch, closing)
            except Exception:  # a bug here must not kill reporting for the rest of the attempt
                log.exception("reporter: unexpected error")
                self._spool(batch)
            with self._cond:
                self._sending = []
                if closing and (not self._queue or self._failures):
                    return

    def _step(self, batch: list[dict[str, Any]], closing: bool) -> None:
        if self._failures and not closing and time.monotonic() < self._retry_at:
            self._spool(batch)  # offline: keep events on disk until the next retry
            return
        if self._spool_files() and not self._deliver_spools():
            self._spool(batch)
            return
        if batch and not self._send(self.attempt, batch):
            self._spool(batch)

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("reports-a*.jsonl"))

    def _spool(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        path = self.spool_dir / f"reports-a{self.attempt:04d}.jsonl"
        try:
            with self._spool_lock, open(path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e) + "\n" for e in events))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            log.exception("reporter: could not spool %d events; they are lost", len(events))

    def _deliver_spools(self) -> bool:
        """Send every spool file, oldest attempt first; remove what was delivered.

        The file is read under the lock but sent outside it, so ``close()`` can keep appending
        meanwhile; whatever was appended during the send is kept for the next round.
        """
        for path in self._spool_files():
            attempt = int(path.stem.removeprefix("reports-a"))
            with self._spool_lock:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
            events = []
            for line in data.decode("utf-8", errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line from a crash mid-write
            for i in range(0, len(events), self.batch_size):
                if not self._send(attempt, events[i : i + self.batch_size]):
                    return False
            with self._spool_lock:
                try:
                    rest = path.read_bytes()[len(data) :]
                    if rest:
                        tmp = path.with_name(path.name + ".tmp")
                        tmp.write_bytes(rest)
                        os.replace(tmp, path)
                    else:
                        path.unlink()
                except OSError:
                    log.exception("reporter: could not clean up the spool %s", path)
        return True

    def _send(self, attempt: int, events: list[dict[str, Any]]) -> bool:
        """POST one batch. True when it is settled (delivered, or rejected for good); False to retry."""
        valid = []
        for event in events:
            try:
                valid.append(_EVENT_ADAPTER.validate_python(event).model_dump(mode="json"))
            except ValidationError as exc:
                log.warning("reporter: dropping invalid %s event: %s", event.get("type"), exc)
        if not valid:
            return True
        try:
            token = self.token_file.read_text().strip()
            # Encoded here, not by httpx (``json=`` refuses NaN): a skipped step's loss is NaN, and
            # one unencodable event would fail its batch, and every resend of it, for good (the
            # controller stores a non-finite metric as no value).
            body = json.dumps({"attempt": attempt, "events": valid}, allow_nan=True).encode()
            resp = self._client.post(
                self.url,
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        except (httpx.HTTPError, OSError) as exc:
            return self._failed(f"{type(exc).__name__}: {exc}")
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            return self._failed(f"HTTP {resp.status_code}")
        self._failures = 0
        if resp.status_code >= 400:
            # Retrying cannot fix a refused batch (bad token, unknown run): say so once and move on.
            log.warning(
                "reporter: controller refused %d events: HTTP %d %s",
                len(valid),
                resp.status_code,
                resp.text[:500],
            )
            return True
        self.delivered += len(valid)
        try:
            action = ReportReply.model_validate(resp.json()).action
        except (ValueError, ValidationError):
            action = WorkerAction.NONE
        if action is not WorkerAction.NONE:
            with self._cond:
                self._action = action
        return True

    def _failed(self, why: str) -> bool:
        self._failures += 1
        delay = min(self.max_backoff, 0.5 * 2 ** min(self._failures, 10)) * (0.5 + random.random() / 2)
        self._retry_at = time.monotonic() + delay
        if self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning("reporter: controller unreachable (%s); spooling, retry in %.1f s", why, delay)
        return False
