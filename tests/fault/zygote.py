"""A pre-loaded launcher for worker processes: ``python tests/fault/zygote.py`` (driven by ``chaos.Zygote``).

The fault drivers start and ``kill -9`` the worker dozens of times. A fresh ``python -m worker``
spends most of its start-up importing torch and transformers (3-5 s on the 2-core CI machine, far
more under load), so 30 restarts would cost minutes of imports. This process imports all of it
once and then ``fork``s one child per request; the child runs exactly what ``python -m worker``
runs (``worker.cli.main(argv)``) in its own session, with its own environment, working directory
and log file, and is killed with a real SIGKILL. Nothing of the worker is stubbed.

Protocol (one JSON object per line): stdin ``{"argv": [...], "env": {...}, "cwd": str, "log": str}``
→ stdout ``{"pid": N}``; whenever a child ends, stdout ``{"exit": N, "code": C}`` (C < 0: killed by
signal -C). ``{"ready": true}`` once the imports are done. EOF on stdin ends the launcher.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback

PRELOAD = (
    "numpy",
    "pyarrow",
    "pyarrow.parquet",
    "torch",
    "torch._dynamo",  # AdamW imports it lazily on the first step
    "torch.distributed.checkpoint",
    "transformers",
    "transformers.models.auto.tokenization_auto",
    "httpx",
    "worker.cli",
    "worker.train",
    "worker.loop",
    "worker.model",
    "worker.metrics",
    "worker.data",
    "worker.checkpoint",
    "worker.report_client",
)


def _send(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _child(request: dict[str, object]) -> None:
    """Runs in the forked child: become ``python -m worker ARGV`` and never return."""
    code = 70
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        fd = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.chdir(str(request["cwd"]))
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        sys.argv = ["worker", *argv]
        from worker.cli import main

        code = main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _send({"ready": True})
    stdin = sys.stdin.buffer
    buf = b""
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.01)
        _reap()
        if not readable:
            continue
        chunk = os.read(stdin.fileno(), 1 << 16)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            _send({"pid": pid})


if __name__ == "__main__":
    main()
