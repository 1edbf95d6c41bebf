"""Where requests may come from: the Host allow-list and the refusal of cross-site state changes.

* ``HostCheck``: a request whose ``Host`` header is not one of this controller's names gets 400
  before anything else runs. That closes DNS rebinding: a hostile page whose name the attacker
  re-points at 127.0.0.1 makes the browser send its own name as ``Host``, never ours. The names
  (``allowed_hosts``) are the public URL's host, the loopback names (bare or on the bound port), a
  bound IP address, and ``Settings.allowed_hosts``.
* ``CrossSiteCheck``: a request that changes state (any method but GET/HEAD/OPTIONS) and carries
  no ``Authorization`` header is authenticated by a cookie or, with auth off, by nothing at all.
  It must come from this origin: ``Sec-Fetch-Site`` (when the browser sends it) is
  ``same-origin`` or ``none``, and ``Origin`` (when sent) is this site. A cross-site form POST to
  ``/api/v1/runs/1/cancel`` is refused with 403. A request that does carry ``Authorization``
  cannot have been forged by another site: forms cannot set that header, and a cross-origin
  ``fetch`` with it needs a CORS preflight this controller never grants.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from controller.settings import Settings

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """Every ``Host`` header value this controller answers (lower case, ``host`` or ``host:port``)."""
    names: set[str] = set()
    parts = urlsplit(settings.public_url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = _DEFAULT_PORTS.get(parts.scheme)
    if port is None or port == default:
        names |= {host, f"{host}:{default}"}
    else:
        names.add(f"{host}:{port}")
    for name in LOOPBACK_NAMES:  # never an attacker's name, whatever the port it comes with
        names |= {name, f"{name}:{settings.port}"}
    bound = settings.host.lower()
    if _is_ip(bound) and bound not in ("0.0.0.0", "::"):
        names.add(f"[{bound}]:{settings.port}" if ":" in bound else f"{bound}:{settings.port}")
    names |= {h.strip().lower() for h in settings.allowed_hosts if h.strip()}
    return frozenset(names)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.allowed = allowed_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = (_header(scope, b"host") or "").strip().lower()
            if host not in self.allowed:
                shown = host[:100] or "(none)"
                await _refuse(
                    send,
                    400,
                    f"Host header {shown!r} is not a name of this controller: use its public URL, or add "
                    "the name to PYRECOVER_ALLOWED_HOSTS",
                )
                return
        await self.app(scope, receive, send)


def cross_site_reason(
    *, method: str, scheme: str, host: str | None, origin: str | None, fetch_site: str | None, public_url: str
) -> str | None:
    """Why a state-changing request without a bearer token must be refused; ``None``: it may pass."""
    if method.upper() in SAFE_METHODS:
        return None
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:40]})"
    if origin is None:
        return None
    mine = {f"{scheme}://{(host or '').lower()}", _origin_of(public_url)}
    if origin.lower().rstrip("/") not in mine:
        return f"cross-site request refused (Origin: {origin[:100]})"
    return None


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class CrossSiteCheck:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.public_url = settings.public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _header(scope, b"authorization") is None:
            reason = cross_site_reason(
                method=scope["method"],
                scheme=scope.get("scheme", "http"),
                host=_header(scope, b"host"),
                origin=_header(scope, b"origin"),
                fetch_site=_header(scope, b"sec-fetch-site"),
                public_url=self.public_url,
            )
            if reason is not None:
                await _refuse(send, 403, reason)
                return
        await self.app(scope, receive, send)
