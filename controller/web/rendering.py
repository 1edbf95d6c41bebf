"""Jinja2 environment for the dashboard: autoescaped templates, filters, static URLs with a content hash."""

from __future__ import annotations

import hashlib
import time
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from controller.web import formatting
from controller.web.security import csrf_token_for, set_csrf_cookie
from controller.web.views import BAD_REASONS

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        duration=formatting.duration,
        ago=formatting.ago,
        isotime=formatting.isotime,
        pct=formatting.pct,
        filesize=formatting.filesize,
        tokens=formatting.tokens,
    )
    env.globals["bad_reasons"] = frozenset(str(r) for r in BAD_REASONS)
    return env


@cache
def static_version(path: str) -> str:
    """First 12 hex digits of the file's SHA-256: URLs change when the file does, so it may be cached."""
    return hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12]


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    viewer: Any,
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` with the globals every page needs, and hand out the CSRF cookie if new."""

    def url_for(name: str, /, **params: Any) -> str:
        return str(request.app.url_path_for(name, **params))

    def static_url(path: str) -> str:
        return f"{url_for('web_static', path=path)}?v={static_version(path)}"

    html = (
        environment()
        .get_template(template)
        .render(
            request=request,
            url_for=url_for,
            static_url=static_url,
            csrf_token=csrf_token_for(request),
            viewer=viewer,
            now=time.time(),
            nav=context.pop("nav", ""),
            **context,
        )
    )
    response = HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)
    set_csrf_cookie(request, response)
    return response


# The pages load only their own scripts and styles: a CSP keeps an injected <script> inert, and no
# other site may frame the dashboard (clickjacking the action buttons).
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
