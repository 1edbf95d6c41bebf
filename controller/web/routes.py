"""The dashboard's pages: routes that translate HTTP to a read query or an API call, and back.

Reads come straight from the DB through :mod:`controller.web.queries` (one page = a handful of
indexed queries). Everything that changes state (a new run, cancel, resume, checkpoint now, stop)
goes through the same domain services the REST API calls, in one transaction, and a new run is
validated by the API's own body model (``RunCreate``): the form shows exactly the messages the
API answers a 422 with, placed next to their fields.

Every run a page names is checked with the API's own rules (``controller/access.py``): another
user's run is a 404 here too, a viewer sees no action buttons and is refused if they post one.
Every integer in a URL is bounded like the API's (``controller/api/deps.py:MAX_ID``): a huge id is a
422, never a database error.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from controller import access, services
from controller.api.deps import MAX_ID
from controller.api.limits import RateLimited, retry_after_header
from controller.auth import AuthError, Principal
from controller.services.errors import DomainError, QuotaExceeded, RunNotFound
from controller.services.sessions import close_session, open_session, redeem_login_code
from controller.services.tokens import user_of_token
from controller.web import downloads, new_run, queries
from controller.web.access import WebContext, resolve_viewer
from controller.web.rendering import STATIC_DIR, render
from controller.web.replies import (
    ContextDep,
    RunIdPath,
    csrf_refusal,
    login_redirect,
    not_found,
    read_form,
    refused,
    viewer_of,
)
from controller.web.security import (
    CsrfError,
    check_csrf,
    clear_session,
    safe_next,
    session_secret,
    set_session,
)
from controller.web.series import SeriesCache
from controller.web.views import Viewer
from shared.events import WorkerAction
from shared.states import RunState

router = APIRouter(include_in_schema=False)
router.include_router(new_run.router)  # before /runs/{run_id}, which would take "new" for an id
router.include_router(downloads.router)

RUNS_PER_PAGE = 50
RUNS_POLL_MS = 5000
RUN_POLL_MS = 3000
CHART_POINTS = 1000
CHARTS = (("loss", "Loss"), ("lr", "Learning rate"), ("tokens_per_s", "Tokens / s"), ("mfu", "MFU"))

log = logging.getLogger("pyrecover.auth")


# ---- runs list ---------------------------------------------------------------------------------


@router.get("/", name="web_runs")
def runs_page(
    request: Request,
    ctx: ContextDep,
    state: Annotated[RunState | None, Query()] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID + 1)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    fragment: bool = False,
) -> Response:
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view or viewer.principal is None:
            return login_redirect(request)
        page = queries.runs_page(
            session,
            state=state,
            before=before,
            after=after,
            limit=RUNS_PER_PAGE,
            now=time.time(),
            base_url=str(request.app.url_path_for("web_runs")),
            visible=access.visible_runs(viewer.principal),
        )
    fragment_params = {k: v for k, v in request.query_params.items() if k != "fragment"} | {"fragment": "1"}
    context = {
        "page": page,
        "nav": "runs",
        "poll_ms": RUNS_POLL_MS,
        "fragment_url": f"{request.url.path}?{urlencode(fragment_params)}",
    }
    return render(request, "_runs_body.html" if fragment else "runs.html", context, viewer=viewer)


# ---- one run -----------------------------------------------------------------------------------


def _may_act(session: Any, principal: Principal, run_id: int) -> bool:
    try:
        access.actionable_run(session, principal, run_id)
    except (AuthError, RunNotFound):
        return False
    return True


@router.get("/runs/{run_id}", name="web_run")
def run_page(request: Request, ctx: ContextDep, run_id: RunIdPath, fragment: bool = False) -> Response:
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view or viewer.principal is None:
            return login_redirect(request)
        try:
            row = access.readable_run(session, viewer.principal, run_id)
        except RunNotFound:
            return not_found(request, viewer, run_id)
        run = queries.run_detail(
            session, row, now=time.time(), can_act=_may_act(session, viewer.principal, run_id)
        )
        # Only the full page draws the charts; the polled fragment skips the query.
        mfu_measured = fragment or queries.mfu_measured(session, run_id)
    context: dict[str, Any] = {
        "run": run,
        "nav": "runs",
        "poll_ms": RUN_POLL_MS,
        "fragment_url": f"{request.app.url_path_for('web_run', run_id=run_id)}?fragment=1",
        "series_url": _series_url(request, run_id),
        "chart_titles": CHARTS,
        "mfu_measured": mfu_measured,
        "can_create": viewer.can_act and viewer.principal is not None and not viewer.principal.read_only,
    }
    return render(request, "_run_fragment.html" if fragment else "run.html", context, viewer=viewer)


def series_cache(request: Request) -> SeriesCache:
    """The app's chart-data cache (created on first use; one per app, so tests never share one)."""
    state = request.app.state
    cache: SeriesCache | None = getattr(state, "web_series_cache", None)
    if cache is None:
        cache = state.web_series_cache = SeriesCache()
    return cache


def _series_url(request: Request, run_id: int) -> str:
    return f"{request.app.url_path_for('web_run_series', run_id=run_id)}?max_points={CHART_POINTS}"


@router.get("/runs/{run_id}/series", name="web_run_series")
def run_series(
    request: Request,
    ctx: ContextDep,
    run_id: RunIdPath,
    max_points: Annotated[int, Query(ge=4, le=10_000)] = CHART_POINTS,
) -> Response:
    """The charts' data: each metric downsampled to ``max_points``, plus where each attempt began."""
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view or viewer.principal is None:
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        try:
            access.readable_run(session, viewer.principal, run_id)
        except RunNotFound:
            return JSONResponse({"detail": f"run {run_id} does not exist"}, status_code=404)
        body = series_cache(request).payload_json(session, run_id, max_points)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


_ACTION_DONE = {
    "cancel": "cancel requested",
    "resume": "run resumed: it is queued again and continues from its latest checkpoint",
    "checkpoint": "checkpoint requested: the worker saves at its next report",
    "stop": "graceful stop requested: the worker saves a final checkpoint and exits",
}


def _act(ctx: WebContext, principal: Principal, run_id: int, action: str) -> None:
    with ctx.session_factory() as session, session.begin():
        run = access.actionable_run(session, principal, run_id)
        if action == "cancel":
            services.cancel_run(session, run, by=principal.actor)
        elif action == "resume":
            services.resume_run(session, run, by=principal.actor)
        else:
            services.request_action(session, run, WorkerAction(action), by=principal.actor)


@router.post("/runs/{run_id}/actions/{action}", name="web_run_action")
async def run_action(
    request: Request, ctx: ContextDep, run_id: RunIdPath, action: Annotated[str, Path(max_length=32)]
) -> Response:
    """Cancel / resume / checkpoint now / stop gracefully, answered as ``{"ok", "message"}``."""
    if action not in _ACTION_DONE:
        return JSONResponse({"ok": False, "message": f"unknown action {action!r}"}, status_code=404)
    viewer = await run_in_threadpool(viewer_of, request, ctx)
    try:
        check_csrf(request, None)
    except CsrfError as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=403)
    if viewer.principal is None or viewer.principal.read_only:
        return JSONResponse({"ok": False, "message": "sign in to act on runs"}, status_code=401)
    try:
        await run_in_threadpool(_act, ctx, viewer.principal, run_id, action)
    except RunNotFound as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=404)
    except AuthError as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=exc.status)
    except QuotaExceeded as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=429)
    except DomainError as exc:  # InvalidTransition, Conflict: the run is not in a state for this
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=409)
    return JSONResponse({"ok": True, "message": _ACTION_DONE[action]})


# ---- sign in / out -----------------------------------------------------------------------------


@router.get("/login", name="web_login_form")
def login_page(
    request: Request, ctx: ContextDep, next: Annotated[str, Query(max_length=2048)] = "/"
) -> Response:
    viewer = viewer_of(request, ctx)
    return render(request, "login.html", {"next": safe_next(next), "error": None}, viewer=viewer)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _throttled(request: Request, viewer: Viewer, target: str) -> Response | None:
    try:
        request.app.state.login_throttle.check(_client(request))
    except RateLimited as exc:
        log.warning("sign-in refused for %s: %s", _client(request), exc)
        context = {"next": target, "error": str(exc)}
        response = render(request, "login.html", context, viewer=viewer, status_code=429)
        response.headers["Retry-After"] = retry_after_header(exc.retry_after_s)
        return response
    return None


def _signed_in(request: Request, ctx: WebContext, secret: str, target: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    set_session(request, response, secret, max_age_s=ctx.settings.session_ttl_s)
    return response


def _failed(request: Request, why: str) -> None:
    request.app.state.login_throttle.failed(_client(request))
    log.warning("failed sign-in from %s: %s", _client(request), why)


@router.post("/login", name="web_login")
async def login(request: Request, ctx: ContextDep) -> Response:
    """Sign in with an API token: a new server-side session, whose id alone goes in the cookie."""
    form = await read_form(request)
    if (refused := csrf_refusal(request, form, None)) is not None:
        return refused
    token = form.get("token", "").strip()
    target = safe_next(form.get("next"))
    viewer = await run_in_threadpool(viewer_of, request, ctx)
    if (throttled := _throttled(request, viewer, target)) is not None:
        return throttled
    secret = await run_in_threadpool(_session_for_token, ctx, token)
    if secret is None:
        _failed(request, "unknown, expired, revoked or worker token")
        context = {"next": target, "error": "That token is not valid (or was revoked)."}
        return render(request, "login.html", context, viewer=viewer, status_code=401)
    return _signed_in(request, ctx, secret, target)


def _session_for_token(ctx: WebContext, token: str) -> str | None:
    if not token:
        return None
    with ctx.session_factory() as session, session.begin():
        found = user_of_token(session, token)
        if found is None:
            return None
        row, user = found
        return open_session(session, user, ttl_s=ctx.settings.session_ttl_s, token_id=row.id)


@router.get("/login/link", name="web_login_link")
def login_link(
    request: Request,
    ctx: ContextDep,
    code: Annotated[str, Query(max_length=128)] = "",
    next: Annotated[str, Query(max_length=2048)] = "/",
) -> Response:
    """Exchange a one-time login code (``pyrecover demo``, ``pyrecover user login-link``) for a session.

    A link followed from another site (``Sec-Fetch-Site: cross-site``) is refused: nobody may sign
    a browser in to an account of their choosing."""
    viewer = viewer_of(request, ctx)
    target = safe_next(next)
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("none", "same-origin"):
        return refused(request, viewer, "Open the sign-in link directly (paste it in the address bar).")
    if (throttled := _throttled(request, viewer, target)) is not None:
        return throttled
    with ctx.session_factory() as session, session.begin():
        user = redeem_login_code(session, code)
        secret = open_session(session, user, ttl_s=ctx.settings.session_ttl_s) if user is not None else None
    if secret is None:
        _failed(request, "unknown, used or expired login code")
        context = {"next": target, "error": "That sign-in link is used up or expired: sign in with a token."}
        return render(request, "login.html", context, viewer=viewer, status_code=401)
    return _signed_in(request, ctx, secret, target)


@router.post("/logout", name="web_logout")
async def logout(request: Request, ctx: ContextDep) -> Response:
    """Delete the session (a copy of the cookie is dead from now on) and the cookie."""
    form = await read_form(request)
    if (refused := csrf_refusal(request, form, None)) is not None:
        return refused
    await run_in_threadpool(_close, ctx, session_secret(request))
    response = RedirectResponse(request.app.url_path_for("web_runs"), status_code=303)
    clear_session(request, response)
    return response


def _close(ctx: WebContext, secret: str | None) -> None:
    with ctx.session_factory() as session, session.begin():
        close_session(session, secret)


# ---- static files ------------------------------------------------------------------------------


@router.get("/static/{path:path}", name="web_static")
def static(path: Annotated[str, Path(max_length=512)]) -> Response:
    """The dashboard's CSS/JS and the vendored chart library. URLs carry a content hash: cache long."""
    if "\x00" in path:
        raise HTTPException(404)
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise HTTPException(404)
    return FileResponse(target, headers={"Cache-Control": "public, max-age=86400"})
