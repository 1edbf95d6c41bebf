"""A real controller (``pyrecover serve`` in a subprocess) with the local backend, for end-to-end tests.

The controller can be killed (SIGKILL) and restarted on the same data dir and port, which is
exactly what a crash looks like to the worker processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

SERVE = "from controller.cli import main; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], limit: float, what: str, every: float = 0.5) -> Any:
    end = time.monotonic() + limit
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(every)


class Controller:
    def __init__(self, data_dir: Path, *, kill_wait_s: float = 5.0) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYRECOVER_")},
            "PYRECOVER_DATA_DIR": str(data_dir),
            "PYRECOVER_HOST": "127.0.0.1",
            "PYRECOVER_PORT": str(self.port),
            "PYRECOVER_RECONCILE_INTERVAL_S": "1",
            "PYRECOVER_LOCAL_KILL_WAIT_S": str(kill_wait_s),
            "PYRECOVER_WORKER_PYTHON": sys.executable,
            # Tests keep their data and checkpoints in temporary directories: the admin's roots.
            "PYRECOVER_DATA_ROOTS": json.dumps([tempfile.gettempdir(), str(data_dir)]),
            "PYRECOVER_CHECKPOINT_ROOTS": json.dumps([tempfile.gettempdir()]),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.token = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", SERVE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def setup(self) -> None:
        upgraded = self.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        created = self.cli("token", "create", "--name", "e2e")
        assert created.returncode == 0, created.stderr
        self.token = created.stdout.strip().splitlines()[0]  # then a line about the new user

    def start(self) -> None:
        self.starts += 1
        log = open(self.data_dir / f"controller-{self.starts}.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve"], env=self.env, stdout=log, stderr=log
        )
        log.close()
        wait_for(self._healthy, 60, "the controller to answer /healthz", every=0.2)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited with {self.proc.returncode}; see {self.data_dir}")
        try:
            return httpx.get(f"{self.url}/api/v1/healthz", timeout=2).status_code == 200 or (
                httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no cleanup; the worker processes live on."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def api(self, method: str, path: str, **kw: Any) -> Any:
        resp = httpx.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            **kw,
        )
        assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def items(self, path: str) -> list[dict[str, Any]]:
        page = self.api("GET", path, params={"limit": 1000})
        return list(page["items"]) if isinstance(page, dict) else list(page)

    def wait_terminal(self, run_id: int, limit: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = self.api("GET", f"/runs/{run_id}")
            return run if run["state"] in ("COMPLETED", "FAILED", "CANCELLED") else None

        return dict(wait_for(done, limit, f"run {run_id} to end"))


def kill_leftover_workers(data_dir: Path) -> None:
    """Kill worker processes a failed test left behind (their pids are in the local job state files)."""
    import json

    for path in (data_dir / "local-jobs").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("result") is None:
            for pid in record.get("pids", []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
