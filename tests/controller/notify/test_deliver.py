"""Webhook delivery against a real local HTTP receiver: signed, once, retried, never in the way."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db import make_engine, make_session_factory, upgrade_database
from controller.db.models import Event, Notification, NotificationDelivery, Run
from controller.notify.deliver import Notifier, backoff_s
from controller.reconciler import Reconciler
from controller.services import create_run, first_admin
from controller.settings import Settings
from controller.state_machine import transition_run
from shared.schemas import RunCreate
from shared.schemas.notify import NotifyEvent
from shared.states import RunState
from shared.states import SchedulerJobState as J
from tests.controller.reconciler.fakes import FakeClock, FakeScheduler

SECRET = "webhook-test-secret"


class Receiver:
    """A real HTTP server on loopback; ``script`` gives the status (or a delay) of each request."""

    def __init__(self, script: Callable[[int], int | float] = lambda n: 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script = script
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                n = len(receiver.requests)
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                answer = receiver.script(n)
                if isinstance(answer, float):
                    time.sleep(answer)
                    answer = 200
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # closing never waits for a deliberately slow answer
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_world(tmp_path: Path, **settings: Any) -> tuple[Settings, Callable[[], Session]]:
    s = Settings(data_dir=tmp_path, notify_secret=SECRET, notify_allowed_hosts=["127.0.0.1"], **settings)
    upgrade_database(s.database_url)
    return s, make_session_factory(make_engine(s.database_url))


def new_run(
    factory: Callable[[], Session],
    settings: Settings,
    url: str,
    events: list[str] | None = None,
    **policy: Any,
) -> int:
    events = events if events is not None else [e.value for e in NotifyEvent]
    body = RunCreate.model_validate(
        {
            "name": "hooked",
            "training": {"dataset": "d", "tokenizer_name_or_path": "t", "training_steps": 50},
            "resources": {"scheduler": "local", "time_limit": "1m"},
            "policy": {"notify": [{"url": url, "events": events}], **policy},
        }
    )
    with factory() as s:
        run = create_run(s, body, owner=first_admin(s), settings=settings)
        s.commit()
        return int(run.id)


def finish(factory: Callable[[], Session], run_id: int, state: RunState, why: str) -> None:
    with factory() as s:
        run = s.get(Run, run_id)
        assert run is not None
        transition_run(s, run, RunState.QUEUED, reason="submitted")
        transition_run(s, run, state, reason=why)
        s.commit()


def test_a_completed_run_is_delivered_once_signed_with_the_dashboard_link(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings, factory = make_world(tmp_path)
    run_id = new_run(factory, settings, receiver.url)
    finish(factory, run_id, RunState.COMPLETED, "trained all 50 steps")
    notifier = Notifier(settings=settings, session_factory=factory)
    assert notifier.run_once() == 1
    assert notifier.run_once() == 0  # delivered: never again
    notifier.stop()
    (request,) = receiver.requests
    headers, body = request["headers"], request["body"]
    expected = hmac.new(
        SECRET.encode(), headers["X-Pyrecover-Timestamp"].encode() + b"." + body, hashlib.sha256
    )
    assert headers["X-Pyrecover-Signature"] == "sha256=" + expected.hexdigest()
    assert headers["X-Pyrecover-Event"] == "completed" and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["event"] == "completed" and data["run"]["state"] == "COMPLETED"
    assert data["run"]["message"] == "trained all 50 steps" and data["run"]["name"] == "hooked"
    assert data["run"]["url"] == f"{settings.public_url}/runs/{run_id}"
    assert data["text"].startswith(f"pyrecover: run <{settings.public_url}/runs/{run_id}|hooked> COMPLETED")
    assert data["delivery"] == int(headers["X-Pyrecover-Delivery"])


def test_events_a_webhook_did_not_ask_for_are_not_sent(tmp_path: Path, receiver: Receiver) -> None:
    settings, factory = make_world(tmp_path)
    run_id = new_run(factory, settings, receiver.url, events=["failed"])
    finish(factory, run_id, RunState.CANCELLED, "cancelled by the user")
    notifier = Notifier(settings=settings, session_factory=factory)
    assert notifier.run_once() == 0 and receiver.requests == []
    notifier.stop()


def test_failures_are_retried_with_backoff_then_given_up_and_the_run_says_so(tmp_path: Path) -> None:
    flaky = Receiver(lambda n: 500 if n < 2 else 200)
    down = Receiver(lambda n: 503)
    try:
        clock = FakeClock()
        settings, factory = make_world(tmp_path, notify_max_attempts=3)
        ok_run = new_run(factory, settings, flaky.url)
        with factory() as s:
            run = s.get(Run, ok_run)
            assert run is not None
            run.name = "other"  # run names are unique
            s.commit()
        bad_run = new_run(factory, settings, down.url)
        finish(factory, ok_run, RunState.COMPLETED, "done")
        finish(factory, bad_run, RunState.FAILED, "boom")
        notifier = Notifier(settings=settings, session_factory=factory, clock=clock)
        assert notifier.run_once() == 2  # both fail once
        assert notifier.run_once() == 0  # nothing due before the backoff
        clock.advance(backoff_s(1))
        assert notifier.run_once() == 2  # flaky fails again, down fails again
        clock.advance(backoff_s(2))
        assert notifier.run_once() == 2  # flaky succeeds; down fails its third and last try
        clock.advance(3600)
        assert notifier.run_once() == 0
        notifier.stop()
        assert len(flaky.requests) == 3 and len(down.requests) == 3
        # the same delivery id on every retry: a receiver can deduplicate
        assert len({r["headers"]["X-Pyrecover-Delivery"] for r in flaky.requests}) == 1
        with factory() as s:
            rows = {d.url: d for d in s.scalars(select(NotificationDelivery))}
            assert rows[flaky.url].delivered_at is not None and rows[flaky.url].attempts == 3
            assert rows[down.url].done and rows[down.url].delivered_at is None
            assert rows[down.url].last_error == "HTTP 503"
            failed = s.scalars(
                select(Event).where(Event.run_id == bad_run, Event.kind == "webhook_failed")
            ).all()
            assert len(failed) == 1 and "given up after 3 tries: HTTP 503" in failed[0].message
            assert "/hook" not in failed[0].message  # a webhook's path may be its secret
    finally:
        flaky.close()
        down.close()


def test_a_user_webhook_to_an_internal_address_is_refused_at_submit_and_at_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    from controller.services.errors import InvalidField

    settings = Settings(data_dir=tmp_path, notify_secret=SECRET)  # 127.0.0.1 not allowed here
    upgrade_database(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    with pytest.raises(InvalidField) as refused:
        new_run(factory, settings, receiver.url)
    assert refused.value.field == "policy.notify[0].url" and "loopback" in str(refused.value)
    # one that got in anyway (submitted before an admin narrowed the allow-list) is refused when sent
    allowed = settings.model_copy(update={"notify_allowed_hosts": ["127.0.0.1"]})
    run_id = new_run(factory, allowed, receiver.url)
    finish(factory, run_id, RunState.COMPLETED, "done")
    notifier = Notifier(settings=settings, session_factory=factory)
    notifier.run_once()
    notifier.stop()
    assert receiver.requests == []
    with factory() as s:
        (delivery,) = s.scalars(select(NotificationDelivery)).all()
        assert "non-public address" in (delivery.last_error or "")


def test_the_reconciler_queues_attempt_failures_and_the_end_and_a_hanging_webhook_never_slows_it(
    tmp_path: Path,
) -> None:
    hanging = Receiver(lambda n: 5.0)  # answers after 5 s
    try:
        settings, factory = make_world(tmp_path, reconcile_interval_s=3600)
        sched = FakeScheduler()
        clock = FakeClock()
        rec = Reconciler(settings=settings, session_factory=factory, schedulers={"local": sched}, clock=clock)
        run_id = new_run(factory, settings, hanging.url, max_failures_without_progress=2, backoff_seconds=0)
        notifier = Notifier(settings=settings, session_factory=factory, interval_s=0.05)
        notifier.start()
        passes = []
        for job in ("job-1", "job-2"):
            rec.run_once()  # submits
            sched.set(job, J.FAILED, exit_code=1, reason="exit code 1")
            started = time.monotonic()
            rec.run_once()  # ends the attempt (and, the second time, the run)
            passes.append(time.monotonic() - started)
        notifier.stop(timeout=1)
        with factory() as s:
            events = [n.event for n in s.scalars(select(Notification).order_by(Notification.id))]
            run = s.get(Run, run_id)
            assert run is not None and run.state == RunState.FAILED
        assert events == ["attempt_failed", "attempt_failed", "failed"]
        assert max(passes) < 1.0, passes  # the reconciler only writes rows; it never waits on a webhook
    finally:
        hanging.close()
