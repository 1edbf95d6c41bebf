"""Browser sessions and CSRF for the dashboard.

* Session: after a token login the API token itself is kept in an ``httponly``,
  ``samesite=strict`` cookie (``secure`` over https). Scripts cannot read it, and no other site
  can make the browser send it. It is checked against the token store on every request, so
  revoking the token signs the browser out.
* CSRF: a random value in a second ``httponly``, ``samesite=strict`` cookie, repeated in each
  page (a ``<meta>`` for scripts and a hidden field for forms). A state-changing request must
  send it back in the ``X-CSRF-Token`` header or the ``csrf_token`` field, and it must match the
  cookie (double submit). A cross-site page can neither read the value nor make the browser send
  the strict cookie, so it cannot forge either half. Requests that announce a cross-site origin
  (``Sec-Fetch-Site`` / ``Origin``) are refused before that.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "pyrecover_session"
CSRF_COOKIE = "pyrecover_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE_S = 7 * 24 * 3600


class CsrfError(Exception):
    """A state-changing request without a valid CSRF token (answered 403)."""


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def csrf_token_for(request: Request) -> str:
    """The CSRF value of this browser: the cookie's, or a new one :func:`set_csrf_cookie` will store."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) >= 32:
        return current
    cached: str | None = getattr(request.state, "new_csrf_token", None)
    if cached is None:
        cached = secrets.token_urlsafe(32)
        request.state.new_csrf_token = cached
    return cached


def set_csrf_cookie(request: Request, response: Response) -> None:
    """Store the CSRF value handed out while rendering (no-op when the browser already has one)."""
    token: str | None = getattr(request.state, "new_csrf_token", None)
    if token is not None:
        response.set_cookie(
            CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/"
        )


def _same_origin(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    parts = urlsplit(origin)
    return (
        parts.netloc == request.headers.get("host", request.url.netloc) and parts.scheme == request.url.scheme
    )


def check_csrf(request: Request, submitted: str | None) -> None:
    """Raise :class:`CsrfError` unless ``submitted`` (form field or header) matches the CSRF cookie."""
    if not _same_origin(request):
        raise CsrfError("cross-site request refused")
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = submitted or request.headers.get(CSRF_HEADER)
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfError("missing or wrong CSRF token: reload the page and try again")


def session_token(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def set_session(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="strict", secure=_secure(request), path="/"
    )


def safe_next(target: str | None) -> str:
    """A post-login redirect target on this site only (no ``//host`` or ``https://...`` open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
