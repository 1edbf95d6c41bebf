"""``pyrecover serve`` and the HTTP edge, against real servers (issue "What happens today", under
"Auth is off by default" and "pyrecover serve --host/--port skip the settings validation"; and
the header-read timeout of "Bounds and timeouts").

* Auth is on by default: an anonymous request is 401 on the API and a redirect to sign-in on the
  dashboard. Only ``--insecure-no-auth`` turns it off, on a loopback address only, with a warning.
* ``--host``/``--port`` are validated like ``PYRECOVER_HOST``/``PYRECOVER_PORT``; with ``--port 0``
  the workers are told the port actually bound (a real worker process's environment is read).
* The ``Host`` header must name this controller (DNS rebinding).
* A cross-site form POST to ``/api/v1/runs/{id}/cancel`` is refused, even with auth off.
* A connection that trickles (or never sends) its request head is closed after
  ``header_timeout_s``; uvicorn alone kept it open.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from controller.cli import app as cli_app
from controller.db.models import Run
from tests.security.conftest import Live, run_body, serve_live

CLI = "from controller.cli import main; main()"
BANNER = re.compile(r"pyrecover controller on http://127\.0\.0\.1:(\d+); workers report to (\S+)")
WAIT_S = 60  # an upper bound for a server to start or a worker to be spawned, never a timing claim


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")}
    # The runs these tests submit name a dataset that exists nowhere (the stand-in worker reads none).
    base = {"PYRECOVER_DATA_DIR": str(tmp_path / "var"), "PYRECOVER_INPUTS_VISIBLE": "[]"}
    return env | base | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"} | extra


class Served:
    """``pyrecover serve`` in a subprocess; its output is collected by a thread."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        environment = _env(tmp_path, **env)
        subprocess.run(
            [sys.executable, "-c", CLI, "db", "upgrade"], env=environment, check=True, capture_output=True
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "serve", *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True)
        self.reader.start()
        end = time.monotonic() + WAIT_S
        while not (match := BANNER.search(self.text)):
            assert self.proc.poll() is None and time.monotonic() < end, self.text
            time.sleep(0.1)
        self.port, self.public_url = int(match[1]), match[2]
        self.url = f"http://127.0.0.1:{self.port}"
        while True:  # the banner is printed just before uvicorn starts answering
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < end, self.text
            time.sleep(0.1)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _upgrade(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", CLI, "db", "upgrade"], env=_env(tmp_path), check=True, capture_output=True
    )


def _token(tmp_path: Path, name: str) -> str:
    _upgrade(tmp_path)
    created = subprocess.run(
        [sys.executable, "-c", CLI, "token", "create", "--name", name],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    return created.stdout.splitlines()[0]


# ------------------------------------------------------------------ flags through the settings
@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in [k for k in os.environ if k.startswith("PYRECOVER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PYRECOVER_DATA_DIR", str(tmp_path))
    return CliRunner(env={"COLUMNS": "200"})


def test_serve_flags_are_validated_like_the_environment(
    cli_env: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRECOVER_OPEN_READ_ONLY", "1")
    by_flag = cli_env.invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    monkeypatch.setenv("PYRECOVER_HOST", "0.0.0.0")
    by_env = cli_env.invoke(cli_app, ["serve"])
    for result in (by_flag, by_env):
        assert result.exit_code == 1 and "open_read_only is only allowed on a loopback host" in result.output
    monkeypatch.delenv("PYRECOVER_HOST")
    monkeypatch.delenv("PYRECOVER_OPEN_READ_ONLY")
    exposed = cli_env.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--insecure-no-auth"])
    assert exposed.exit_code == 1 and "loopback" in exposed.output
    monkeypatch.setenv("PYRECOVER_AUTH_REQUIRED", "0")
    quietly = cli_env.invoke(cli_app, ["serve"])
    assert quietly.exit_code == 1 and "--insecure-no-auth" in quietly.output, "auth goes off only by the flag"
    assert cli_env.invoke(cli_app, ["serve", "--port", "70000"]).exit_code == 2


def test_auth_is_on_by_default_and_workers_are_told_the_bound_port(tmp_path: Path) -> None:
    """``pyrecover serve --port 0``: the port comes from the socket, and the worker a run starts gets
    exactly that URL (a stand-in worker records its environment)."""
    seen = tmp_path / "worker-env.txt"
    fake_worker = tmp_path / "fake-python"
    fake_worker.write_text(f"#!/bin/sh\nenv > {seen}.tmp && mv {seen}.tmp {seen}\nexit 0\n")
    fake_worker.chmod(0o755)
    token = _token(tmp_path, "wendy")
    server = Served(
        tmp_path,
        "--port",
        "0",
        PYRECOVER_WORKER_PYTHON=str(fake_worker),
        PYRECOVER_RECONCILE_INTERVAL_S="0.5",
    )
    try:
        assert server.port != 8000 and server.public_url == server.url
        anonymous = httpx.get(f"{server.url}/api/v1/runs")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{server.url}/", follow_redirects=False).status_code == 303
        created = httpx.post(
            f"{server.url}/api/v1/runs",
            json=run_body("port-check"),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
        end = time.monotonic() + WAIT_S
        while not seen.exists():
            assert time.monotonic() < end and server.proc.poll() is None, server.text
            time.sleep(0.2)
        env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
        assert env["PYRECOVER_CONTROLLER_URL"] == f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_insecure_no_auth_serves_loopback_with_a_warning_and_refuses_cross_site_posts(tmp_path: Path) -> None:
    server = Served(tmp_path, "--port", "0", "--insecure-no-auth", PYRECOVER_RUN_RECONCILER="0")
    try:
        assert "authentication is OFF" in server.text
        assert httpx.get(f"{server.url}/api/v1/runs").status_code == 200
        run = httpx.post(f"{server.url}/api/v1/runs", json=run_body("open-run")).json()
        assert run["owner"] == "admin", "with auth off, runs belong to the first admin"
        cancel = f"{server.url}/api/v1/runs/{run['id']}/cancel"
        # What a hostile page's auto-submitting <form method=post action=...cancel> sends:
        forged = [
            {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
            {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"},
            {"Origin": "null", "Content-Type": "text/plain"},
        ]
        for headers in forged:
            r = httpx.post(cancel, content=b"x=1", headers=headers)
            assert r.status_code == 403 and "cross-site" in r.json()["detail"], (headers, r.text)
        assert httpx.get(f"{server.url}/api/v1/runs/{run['id']}").json()["state"] == "PENDING"
        same = httpx.post(cancel, headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200 and same.json()["state"] == "CANCELLED"
    finally:
        server.stop()


# ------------------------------------------------------------------ Host header
@pytest.fixture
def behind_proxy(tmp_path: Path) -> Iterator[Live]:
    yield from serve_live(tmp_path, public_url="https://pyrecover.example.org", header_timeout_s=1.0)


def _get(live: Live, host: str) -> httpx.Response:
    return httpx.get(f"{live.url}/api/v1/runs", headers={"Host": host} | live.h())


def test_the_host_header_must_name_this_controller(behind_proxy: Live) -> None:
    live = behind_proxy
    for host in (
        f"127.0.0.1:{live.port}",
        f"localhost:{live.port}",
        "pyrecover.example.org",
        "PyRecover.Example.Org:443",
    ):
        assert _get(live, host).status_code == 200, host
    rebound = (
        "evil.example",
        f"evil.example:{live.port}",
        "pyrecover.example.org.evil.example",
        "",
        "10.0.0.1:8000",
    )
    for host in rebound:
        r = _get(live, host)
        assert r.status_code == 400 and "not a name of this controller" in r.json()["detail"], host
    page = httpx.get(f"{live.url}/", headers={"Host": f"rebind.attacker.test:{live.port}"})
    assert page.status_code == 400, "the dashboard is behind the same check"
    with live.factory() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0


# ------------------------------------------------------------------ header-read timeout
def _closed_within(sock: socket.socket, limit_s: float) -> bool:
    """Whether the server closes ``sock`` within ``limit_s`` (reads until EOF; False on timeout)."""
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _trickle_until_cut(sock: socket.socket, every_s: float, limit_s: float) -> float | None:
    """Send one byte every ``every_s`` (never completing a head) until the server cuts the
    connection; the seconds that took, or None if it still held it after ``limit_s``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        time.sleep(every_s)
        try:
            sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None if not _closed_within(sock, 0.5) else time.monotonic() - started


def test_a_slow_request_head_is_cut_off(behind_proxy: Live) -> None:
    live = behind_proxy  # header_timeout_s = 1
    with contextlib.ExitStack() as stack:
        silent = stack.enter_context(_connect(live.port))
        trickle = stack.enter_context(_connect(live.port))
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # A byte every quarter second: each one arrives well inside the timeout, but the head never
        # completes, so the deadline is the head's, not the byte's.
        cut_after = _trickle_until_cut(trickle, 0.25, 20)
        assert cut_after is not None, "a trickled head held its connection"
        assert cut_after >= 0.9, f"cut off after {cut_after:.2f} s, before the 1 s head timeout"
        assert _closed_within(silent, 20), "a connection that sent nothing was held"
        print(f"\nslow head cut off after {cut_after:.1f} s (header_timeout_s = 1)")
        # A keep-alive connection: the first request is answered, a second head that stalls is cut off.
        kept = stack.enter_context(_connect(live.port))
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in kept.recv(4096)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert _closed_within(kept, 20)
        # A client that is merely slow, but completes its head in time, is served.
        slow_ok = stack.enter_context(_connect(live.port))
        slow_ok.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)
        slow_ok.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        slow_ok.settimeout(10)
        assert b"200 OK" in slow_ok.recv(4096)


def test_uvicorn_alone_held_a_silent_connection(tmp_path: Path) -> None:
    """The regression the timeout fixes: the same app under uvicorn's own h11 protocol still holds a
    connection that sent nothing, three times the controller's head timeout later."""
    import uvicorn

    from controller.api import create_app
    from controller.db import upgrade_database
    from controller.settings import Settings
    from tests.security.conftest import _free_port

    settings = Settings(data_dir=tmp_path, run_reconciler=False, port=_free_port(), header_timeout_s=1.0)
    upgrade_database(settings.database_url)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning", http="h11"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < end
        time.sleep(0.05)
    try:
        with _connect(settings.port) as silent:
            assert not _closed_within(silent, 3.0)
    finally:
        server.should_exit = True
        thread.join(30)


def test_the_protocol_counts_what_it_cut(behind_proxy: Any) -> None:
    from controller.serving import HeadTimeoutH11

    before = HeadTimeoutH11.timed_out
    with _connect(behind_proxy.port) as silent:
        assert _closed_within(silent, 20)
    assert HeadTimeoutH11.timed_out == before + 1
