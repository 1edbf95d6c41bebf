"""Browser sessions and CSRF for the dashboard.

* Session: signing in (a token, or a one-time login code) opens a server-side session
  (``controller/services/sessions.py``); the cookie holds only its random id, never an API token,
  in an ``httponly``, ``samesite=strict`` cookie (``secure`` over https or when the public URL is
  https). Scripts cannot read it, no other site can make the browser send it, and logout deletes
  the session, so a copied cookie is dead afterwards.
* CSRF: a random value in a second ``httponly``, ``samesite=strict`` cookie, repeated in each
  page (a ``<meta>`` for scripts and a hidden field for forms). A state-changing request must
  send it back in the ``X-CSRF-Token`` header or the ``csrf_token`` field, and it must match the
  cookie (double submit). A cross-site page can neither read the value nor make the browser send
  the strict cookie, so it cannot forge either half. Requests that announce a cross-site origin
  (``Sec-Fetch-Site`` / ``Origin``) are refused before that, here and, for every route, by
  ``controller/origins.py:CrossSiteCheck``.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from controller.origins import cross_site_reason

SESSION_COOKIE = "pyrecover_session"
CSRF_COOKIE = "pyrecover_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


class CsrfError(Exception):
    """A state-changing request without a valid CSRF token (answered 403)."""


def _public_url(request: Request) -> str:
    settings = getattr(request.app.state, "settings", None) if "app" in request.scope else None
    return str(getattr(settings, "public_url", ""))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or _public_url(request).startswith("https://")


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


def check_csrf(request: Request, submitted: str | None) -> None:
    """Raise :class:`CsrfError` unless the request is same-origin and ``submitted`` (form field or
    header) matches the CSRF cookie."""
    reason = cross_site_reason(
        method=request.method,
        scheme=request.url.scheme,
        host=request.headers.get("host", request.url.netloc),
        origin=request.headers.get("origin"),
        fetch_site=request.headers.get("sec-fetch-site"),
        public_url=_public_url(request),
    )
    if reason is not None:
        raise CsrfError(reason)
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = submitted or request.headers.get(CSRF_HEADER)
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfError("missing or wrong CSRF token: reload the page and try again")


def session_secret(request: Request) -> str | None:
    """The session id the browser sent (checked against the database by the caller)."""
    return request.cookies.get(SESSION_COOKIE) or None


def set_session(request: Request, response: Response, secret: str, *, max_age_s: float) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(max_age_s),
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
