"""``Notifier``: the thread that delivers webhook notifications, never in the reconciler's way.

Each pass (every ``interval_s``, or at once after ``wake()``):

1. **fan out** every new notification into one delivery per webhook that wants its event
   (``controller.notify.targets.destinations``);
2. **claim** the deliveries that are due, by moving their next attempt a lease ahead in one short
   transaction (two controllers on one database then never send the same delivery at once), and
3. **send** them, several at a time, outside any transaction: a JSON body (Slack-compatible ``text``
   plus the run, its state, the message and the dashboard link), signed with HMAC-SHA256.

A failed send is retried with exponential backoff (2 s, 4 s, … at most 1 h apart) until
``notify_max_attempts``; then it is given up and the run's event log says so. Delivery is
at-least-once: a receiver deduplicates with ``X-Pyrecover-Delivery``.

Verifying a delivery: ``hex(HMAC-SHA256(secret, timestamp + "." + body))`` equals the
``X-Pyrecover-Signature`` header after ``sha256=``, with ``timestamp`` from ``X-Pyrecover-Timestamp``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.models import Notification, NotificationDelivery, Run
from controller.db.types import to_datetime
from controller.notify.targets import Destination, UnsafeTarget, connection_for, destinations, display
from controller.settings import Settings
from controller.state_machine import record_run_event
from shared.schemas.notify import NotifyEvent

log = logging.getLogger(__name__)

SECRET_FILE = "notify.key"
LEASE_S = 60.0
"""A claimed delivery is not picked again for this long (longer than any send can take)."""
SEND_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 3600.0
BATCH = 50


def backoff_s(attempts: int) -> float:
    """Seconds before try ``attempts + 1``: 2, 4, 8 … capped at an hour."""
    return float(min(MAX_BACKOFF_S, 2.0 ** max(attempts, 1)))


def signing_key(settings: Settings) -> bytes:
    """``notify_secret``, else a random key created once in ``<data_dir>/notify.key`` (mode 0600)."""
    if settings.notify_secret:
        return settings.notify_secret.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Job:
    delivery_id: int
    destination: Destination
    event: str
    body: bytes


def payload(settings: Settings, run: Run, note: Notification, delivery_id: int) -> dict[str, object]:
    link = f"{settings.public_url.rstrip('/')}/runs/{run.id}"
    text = f"pyrecover: run <{link}|{run.name}> {note.state} ({note.event.replace('_', ' ')})"
    if note.message:
        text += f": {note.message}"
    return {
        "text": text,
        "event": note.event,
        "delivery": delivery_id,
        "time": note.created_at.isoformat(),
        "run": {"id": run.id, "name": run.name, "state": note.state, "message": note.message, "url": link},
    }


class Notifier:
    """Owns the delivery thread; every pass works in short transactions (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        session_factory: Callable[[], Session],
        clock: Callable[[], float] = time.time,
        interval_s: float = 1.0,
        workers: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.interval_s = interval_s
        self._clock = clock
        self._key = signing_key(settings)
        self._client = httpx.Client(timeout=SEND_TIMEOUT_S, follow_redirects=False, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyrecover-notify")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pyrecover-notifier", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # keep delivering; the next pass retries
                log.exception("notifier pass failed")
            self._wake.wait(self.interval_s)

    # ------------------------------------------------------------------ one pass
    def run_once(self) -> int:
        """Fan out, claim and send what is due; returns how many sends were tried."""
        self._fan_out()
        jobs = self._claim()
        results = list(self._pool.map(self._send, jobs))
        self._record(jobs, results)
        return len(jobs)

    def _fan_out(self) -> None:
        with self.session_factory() as session:
            notes = session.scalars(
                select(Notification)
                .where(Notification.fanned_out.is_(False))
                .order_by(Notification.id)
                .limit(BATCH)
            ).all()
            for note in notes:
                run = session.get(Run, note.run_id)
                if run is not None:
                    known = set(
                        session.scalars(
                            select(NotificationDelivery.url).where(
                                NotificationDelivery.notification_id == note.id
                            )
                        )
                    )
                    for dest in destinations(self.settings, run.spec_model(), NotifyEvent(note.event)):
                        if dest.url not in known:
                            session.add(
                                NotificationDelivery(
                                    notification_id=note.id,
                                    url=dest.url,
                                    trusted=dest.trusted,
                                    next_attempt_at=to_datetime(self._clock()),
                                )
                            )
                note.fanned_out = True
            session.commit()

    def _claim(self) -> list[_Job]:
        now = to_datetime(self._clock())
        assert now is not None
        jobs: list[_Job] = []
        with self.session_factory() as session:
            due = session.execute(
                select(NotificationDelivery, Notification, Run)
                .join(Notification, NotificationDelivery.notification_id == Notification.id)
                .join(Run, Notification.run_id == Run.id)
                .where(NotificationDelivery.done.is_(False), NotificationDelivery.next_attempt_at <= now)
                .order_by(NotificationDelivery.next_attempt_at)
                .limit(BATCH)
            ).all()
            for delivery, note, run in due:
                claimed = session.execute(
                    update(NotificationDelivery)
                    .where(
                        NotificationDelivery.id == delivery.id,
                        NotificationDelivery.next_attempt_at == delivery.next_attempt_at,
                    )
                    .values(next_attempt_at=now + timedelta(seconds=LEASE_S))
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    body = json.dumps(payload(self.settings, run, note, delivery.id)).encode()
                    jobs.append(
                        _Job(delivery.id, Destination(delivery.url, delivery.trusted), note.event, body)
                    )
            session.commit()
        return jobs

    def _send(self, job: _Job) -> str | None:
        """POST one delivery; ``None`` on a 2xx, else why it failed."""
        try:
            conn = connection_for(job.destination, self.settings)
        except UnsafeTarget as exc:
            return str(exc)
        timestamp = str(int(self._clock()))
        headers = {
            **conn.headers,
            "Content-Type": "application/json",
            "User-Agent": "pyrecover-webhook/1",
            "X-Pyrecover-Event": job.event,
            "X-Pyrecover-Delivery": str(job.delivery_id),
            "X-Pyrecover-Timestamp": timestamp,
            "X-Pyrecover-Signature": sign(self._key, timestamp, job.body),
        }
        try:
            response = self._client.post(
                conn.url, content=job.body, headers=headers, extensions=conn.extensions
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    def _record(self, jobs: list[_Job], results: list[str | None]) -> None:
        if not jobs:
            return
        now = self._clock()
        with self.session_factory() as session:
            for job, error in zip(jobs, results, strict=True):
                delivery = session.get(NotificationDelivery, job.delivery_id)
                if delivery is None:
                    continue
                delivery.attempts += 1
                if error is None:
                    delivery.done, delivery.delivered_at, delivery.last_error = True, to_datetime(now), None
                    continue
                delivery.last_error = error
                if delivery.attempts >= self.settings.notify_max_attempts:
                    delivery.done = True
                    note = session.get(Notification, delivery.notification_id)
                    run = session.get(Run, note.run_id) if note is not None else None
                    if run is not None:
                        record_run_event(
                            session,
                            run,
                            kind="webhook_failed",
                            message=f"webhook {display(delivery.url)} ({job.event}) given up after "
                            f"{delivery.attempts} tries: {error}",
                        )
                else:
                    delivery.next_attempt_at = to_datetime(now + backoff_s(delivery.attempts))  # type: ignore[assignment]
            session.commit()
