"""Where a notification goes, and why a user's webhook cannot be aimed at the controller's own network.

A run's webhooks (``policy.notify``) are chosen by its user, so they are a server-side request the
user controls (SSRF): left alone, ``http://127.0.0.1:8000/...`` or a cloud metadata address would
let a user make the controller POST into networks only it can reach. So a user's webhook must
resolve to global (public) addresses only, unless its host is in the admin's
``notify_allowed_hosts``; the check happens at submit for IP literals and names like
``localhost``, and again at every delivery on the addresses the name resolves to then, and the
connection goes to the address that was checked (no second lookup an attacker's DNS could answer
differently). Redirects are never followed. The admin's own webhooks (``notify_webhooks``) are
trusted and used as they are.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from controller.settings import Settings
from shared.schemas import RunCreate
from shared.schemas.notify import NotifyEvent, NotifyTarget

MAX_RUN_WEBHOOKS = 16


class UnsafeTarget(ValueError):
    """A user's webhook points at an address the controller must not call."""


@dataclass(frozen=True)
class Destination:
    url: str
    trusted: bool
    """An admin's webhook: no address check."""


def destinations(settings: Settings, spec: RunCreate, event: NotifyEvent) -> list[Destination]:
    """Every webhook that wants ``event`` for this run: the admin's first, then the run's own."""
    out = [Destination(t.url, trusted=True) for t in settings.notify_webhooks if t.wants(event)]
    out += [Destination(t.url, trusted=False) for t in spec.policy.notify if t.wants(event)]
    unique: dict[str, Destination] = {}
    for d in out:
        unique.setdefault(d.url, d)  # the admin's copy of a URL wins: it is trusted
    return list(unique.values())


def _allowed(host: str, settings: Settings) -> bool:
    return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in settings.notify_allowed_hosts}


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_run_targets(targets: Sequence[NotifyTarget], settings: Settings) -> None:
    """At submit: refuse a run's webhook whose host is obviously internal (raise ``UnsafeTarget``).

    Names are resolved at delivery, not here: DNS may differ then, and a submission must not wait
    on it. The message names the target by index (``policy.notify[1].url``).
    """
    if len(targets) > MAX_RUN_WEBHOOKS:
        raise UnsafeTarget(f"policy.notify: at most {MAX_RUN_WEBHOOKS} webhooks per run")
    for index, target in enumerate(targets):
        host = urlsplit(target.url).hostname or ""
        if _allowed(host, settings):
            continue
        internal = host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.endswith(
            ".localhost"
        )
        with contextlib.suppress(ValueError):  # a name: checked when it is resolved, at delivery
            internal = internal or not _is_public(host)
        if internal:
            raise UnsafeTarget(
                f"policy.notify[{index}].url: {host!r} is a loopback, private or link-local address; "
                "webhooks of a run must reach a public address (an admin may allow a host with "
                "PYRECOVER_NOTIFY_ALLOWED_HOSTS)"
            )


@dataclass(frozen=True)
class Connection:
    """How to reach a destination: the URL to connect to, and the headers/extensions that keep the
    original name for HTTP (``Host``) and TLS (SNI and certificate checks)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str]


def connection_for(destination: Destination, settings: Settings) -> Connection:
    """The checked, pinned connection for a destination (raise ``UnsafeTarget`` if it is internal)."""
    parts = urlsplit(destination.url)
    host = parts.hostname or ""
    if destination.trusted or _allowed(host, settings):
        return Connection(url=destination.url, headers={}, extensions={})
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeTarget(f"cannot resolve {host!r}: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses or not all(_is_public(a) for a in addresses):
        raise UnsafeTarget(f"{host!r} resolves to a non-public address ({', '.join(addresses)}): refused")
    address = addresses[0]
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Connection(url=url, headers={"Host": host_header}, extensions=extensions)


def display(url: str) -> str:
    """A webhook as it may be shown to people: scheme and host only (paths often hold a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
