"""Serving the controller: settings built like the environment's, the socket bound before anything
else, and uvicorn with a request-head timeout.

* ``serve_settings`` turns ``pyrecover serve`` flags into ``Settings(...)`` keywords, so ``--host``
  and ``--port`` go through the same validation as ``PYRECOVER_HOST`` / ``PYRECOVER_PORT``
  (``--host 0.0.0.0`` with open read-only mode is refused alike). Auth is on unless
  ``--insecure-no-auth`` is given, which a non-loopback address refuses.
* ``bind`` opens the listening socket first; the settings are then rebuilt with the port actually
  bound, so the URL handed to workers (``Settings.public_url``) names it, ``--port 0`` included.
* ``HeadTimeoutH11`` closes a connection that has not sent a complete request head within
  ``Settings.header_timeout_s`` (uvicorn's h11 protocol has no such timer: a client trickling
  header bytes, or sending none, held its connection forever). The timer runs from the
  connection's start and again from the first byte of each keep-alive request.
* Forwarded headers (``X-Forwarded-For`` / ``-Proto``) are believed only from
  ``Settings.trusted_proxies``; by default from nobody.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from controller.settings import Settings

log = logging.getLogger("pyrecover.serve")


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (``header_timeout_s``)."""

    header_timeout_s: float = 10.0
    timed_out = 0
    """Connections closed for a slow head, in this process (for tests and logs)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a new request begins: its head must be complete in time
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            HeadTimeoutH11.timed_out += 1
            log.info(
                "closing a connection from %s: no request head within %.0f s",
                self.client,
                self.header_timeout_s,
            )
            self.transport.close()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutH11]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this head timeout."""
    return type("HeadTimeoutH11", (HeadTimeoutH11,), {"header_timeout_s": seconds})


def serve_settings(
    *, host: str | None, port: int | None, data_dir: Any | None, insecure_no_auth: bool
) -> dict[str, Any]:
    """The ``Settings`` keywords ``pyrecover serve`` flags stand for (the environment fills the rest)."""
    kwargs: dict[str, Any] = {}
    for key, value in (("host", host), ("port", port), ("data_dir", data_dir)):
        if value is not None:
            kwargs[key] = value
    if insecure_no_auth:
        kwargs["auth_required"] = False
    return kwargs


def check_auth_choice(settings: Settings, *, insecure_no_auth: bool) -> None:
    """``ValueError`` unless auth is on, or off through ``--insecure-no-auth`` on a loopback address."""
    if not settings.auth_required and not insecure_no_auth:
        raise ValueError(
            "auth_required is off in the environment (PYRECOVER_AUTH_REQUIRED): authentication is turned "
            "off only by `pyrecover serve --insecure-no-auth`, on a loopback address"
        )
    settings.validate_for_serving()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> Any:
    """The ``uvicorn.Config`` every way of serving uses (``pyrecover serve``, the demo)."""
    import uvicorn

    trusted = [p.strip() for p in settings.trusted_proxies if p.strip()]
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": head_timeout_protocol(settings.header_timeout_s),
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": ",".join(trusted) if trusted else "",
        "timeout_keep_alive": 5,
        "log_level": "info",
        "server_header": False,
    }
    return uvicorn.Config(app, **(options | overrides))
