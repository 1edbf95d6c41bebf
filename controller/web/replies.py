"""What every dashboard route shares: who is looking, the sign-in redirect, refusals, form bodies.

The page routes (``controller/web/routes.py``), the new-run form (``controller/web/new_run.py``) and
the downloads (``controller/web/downloads.py``) answer a refused or unknown request the same way: a
page that needs a sign-in redirects to it, another user's run is the same 404 as a missing one.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl, urlencode

from fastapi import Depends, HTTPException, Path, Request
from starlette.responses import RedirectResponse, Response

from controller.api.deps import MAX_ID
from controller.web.access import WebContext, resolve_viewer, web_context
from controller.web.rendering import render
from controller.web.security import CSRF_FIELD, CsrfError, check_csrf
from controller.web.views import Viewer

MAX_FORM_BYTES = 64 * 1024

ContextDep = Annotated[WebContext, Depends(web_context)]
RunIdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


def viewer_of(request: Request, ctx: WebContext) -> Viewer:
    with ctx.session_factory() as session:
        return resolve_viewer(request, ctx.settings, session)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = request.app.url_path_for("web_login_form")
    return RedirectResponse(f"{url}?{urlencode({'next': target})}", status_code=303)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the dashboard's forms post nothing else), size-capped."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def csrf_refusal(request: Request, form: dict[str, str], viewer: Viewer | None) -> Response | None:
    """None when the form's CSRF token is good, else the 403 page to answer with."""
    try:
        check_csrf(request, form.get(CSRF_FIELD))
    except CsrfError as exc:
        context = {"title": "Request refused", "message": f"{exc}."}
        return render(request, "error.html", context, viewer=viewer or Viewer.anonymous(), status_code=403)
    return None


def refused(request: Request, viewer: Viewer, message: str, status_code: int = 403) -> Response:
    context = {"title": "Not allowed" if status_code == 403 else "Too many", "message": message}
    return render(request, "error.html", context, viewer=viewer, status_code=status_code)


def not_found(request: Request, viewer: Viewer, run_id: int) -> Response:
    missing = {"title": "Not found", "message": f"There is no run {run_id}."}
    return render(request, "error.html", missing, viewer=viewer, status_code=404)
