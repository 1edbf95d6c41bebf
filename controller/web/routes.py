"""The dashboard's pages: routes that translate HTTP to a read query or an API call, and back.

Reads come straight from the DB through :mod:`controller.web.queries` (one page = a handful of
indexed queries). Everything that changes state (a new run, cancel, resume, checkpoint now, stop)
goes through the same domain services the REST API calls, in one transaction, and a new run is
validated by the API's own body model (``RunCreate``): the form shows exactly the messages the
API answers a 422 with, placed next to their fields.
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from controller import services
from controller.services.errors import Conflict, DomainError, InvalidSpec, RunNotFound
from controller.web import forms, queries
from controller.web.access import WebContext, resolve_viewer, web_context
from controller.web.rendering import STATIC_DIR, render
from controller.web.security import (
    CSRF_FIELD,
    CsrfError,
    check_csrf,
    clear_session,
    safe_next,
    set_session,
)
from controller.web.series import SeriesCache
from controller.web.views import Viewer
from shared.events import WorkerAction
from shared.schemas import RunCreate
from shared.states import RunState

router = APIRouter(include_in_schema=False)

RUNS_PER_PAGE = 50
MAX_FORM_BYTES = 64 * 1024
RUNS_POLL_MS = 5000
RUN_POLL_MS = 3000
CHART_POINTS = 1000
CHARTS = (("loss", "Loss"), ("lr", "Learning rate"), ("tokens_per_s", "Tokens / s"), ("mfu", "MFU"))

ContextDep = Annotated[WebContext, Depends(web_context)]


def _viewer(request: Request, ctx: WebContext) -> Viewer:
    with ctx.session_factory() as session:
        return resolve_viewer(request, ctx.settings, session)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = request.app.url_path_for("web_login_form")
    return RedirectResponse(f"{url}?{urlencode({'next': target})}", status_code=303)


async def _read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the dashboard's forms post nothing else), size-capped."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _csrf_refusal(request: Request, form: dict[str, str], viewer: Viewer | None) -> Response | None:
    """None when the form's CSRF token is good, else the 403 page to answer with."""
    try:
        check_csrf(request, form.get(CSRF_FIELD))
    except CsrfError as exc:
        context = {"title": "Request refused", "message": f"{exc}."}
        return render(request, "error.html", context, viewer=viewer or Viewer.anonymous(), status_code=403)
    return None


# ---- runs list ---------------------------------------------------------------------------------


@router.get("/", name="web_runs")
def runs_page(
    request: Request,
    ctx: ContextDep,
    state: Annotated[RunState | None, Query()] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    fragment: bool = False,
) -> Response:
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view:
            return _login_redirect(request)
        page = queries.runs_page(
            session,
            state=state,
            before=before,
            after=after,
            limit=RUNS_PER_PAGE,
            now=time.time(),
            base_url=str(request.app.url_path_for("web_runs")),
        )
    fragment_params = {k: v for k, v in request.query_params.items() if k != "fragment"} | {"fragment": "1"}
    context = {
        "page": page,
        "nav": "runs",
        "poll_ms": RUNS_POLL_MS,
        "fragment_url": f"{request.url.path}?{urlencode(fragment_params)}",
    }
    return render(request, "_runs_body.html" if fragment else "runs.html", context, viewer=viewer)


# ---- new run (declared before /runs/{run_id}) ----------------------------------------------------


def _form_context(values: dict[str, Any], errors: forms.FormErrors) -> dict[str, Any]:
    return {
        "nav": "new",
        "sections": forms.SECTIONS,
        "values": values,
        "field_errors": errors.fields,
        "section_errors": errors.sections,
        "form_errors": errors.form,
    }


@router.get("/runs/new", name="web_new_run")
def new_run_page(request: Request, ctx: ContextDep) -> Response:
    viewer = _viewer(request, ctx)
    if not viewer.can_act:
        return _login_redirect(request)
    return render(request, "new_run.html", _form_context({}, forms.FormErrors()), viewer=viewer)


@router.post("/runs/new", name="web_create_run")
async def create_run(request: Request, ctx: ContextDep) -> Response:
    viewer = await run_in_threadpool(_viewer, request, ctx)
    if not viewer.can_act:
        return _login_redirect(request)
    form = await _read_form(request)
    if (refused := _csrf_refusal(request, form, viewer)) is not None:
        return refused
    values: dict[str, Any] = {f.name: form.get(f.name, "") for f in forms.FIELDS.values()}
    for f in forms.FIELDS.values():
        if f.kind == "bool":  # an unchecked box is absent from the form: show it unchecked again
            values[f.name] = form.get(f.name) in ("true", "on", "1")
    try:
        body = RunCreate.model_validate(forms.form_to_body(form))
    except ValidationError as exc:
        # Exactly the API's 422: FastAPI reports body errors with "body" in front of the location.
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        errors = forms.place_errors(422, detail)
        return render(request, "new_run.html", _form_context(values, errors), viewer=viewer, status_code=422)
    try:
        run_id = await run_in_threadpool(_create, ctx, body)
    except InvalidSpec as exc:  # the controller's own rules (allow-lists, path roots): as the API's 422
        errors = forms.place_errors(422, [{"loc": ["body", *exc.field.split(".")], "msg": str(exc)}])
        return render(request, "new_run.html", _form_context(values, errors), viewer=viewer, status_code=422)
    except Conflict as exc:
        errors = forms.FormErrors()
        if exc.field is not None and exc.field in forms.FIELDS:
            errors.fields[exc.field] = [str(exc)]
        else:
            errors.form.append(str(exc))
        return render(request, "new_run.html", _form_context(values, errors), viewer=viewer, status_code=409)
    return RedirectResponse(request.app.url_path_for("web_run", run_id=run_id), status_code=303)


def _create(ctx: WebContext, body: RunCreate) -> int:
    with ctx.session_factory() as session, session.begin():
        return services.create_run(session, body, settings=ctx.settings).id


# ---- one run -----------------------------------------------------------------------------------


@router.get("/runs/{run_id}", name="web_run")
def run_page(request: Request, ctx: ContextDep, run_id: int, fragment: bool = False) -> Response:
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view:
            return _login_redirect(request)
        run = queries.run_detail(session, run_id, now=time.time())
    if run is None:
        missing = {"title": "Not found", "message": f"There is no run {run_id}."}
        return render(request, "error.html", missing, viewer=viewer, status_code=404)
    context: dict[str, Any] = {
        "run": run,
        "nav": "runs",
        "poll_ms": RUN_POLL_MS,
        "fragment_url": f"{request.app.url_path_for('web_run', run_id=run_id)}?fragment=1",
        "series_url": _series_url(request, run_id),
        "chart_titles": CHARTS,
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
    run_id: int,
    max_points: Annotated[int, Query(ge=4, le=10_000)] = CHART_POINTS,
) -> Response:
    """The charts' data: each metric downsampled to ``max_points``, plus where each attempt began."""
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view:
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        if not queries.run_exists(session, run_id):
            return JSONResponse({"detail": f"run {run_id} not found"}, status_code=404)
        body = series_cache(request).payload_json(session, run_id, max_points)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


_ACTION_DONE = {
    "cancel": "cancel requested",
    "resume": "run resumed: it is queued again and continues from its latest checkpoint",
    "checkpoint": "checkpoint requested: the worker saves at its next report",
    "stop": "graceful stop requested: the worker saves a final checkpoint and exits",
}


def _act(ctx: WebContext, run_id: int, action: str) -> None:
    with ctx.session_factory() as session, session.begin():
        if action == "cancel":
            services.cancel_run(session, run_id)
        elif action == "resume":
            services.resume_run(session, run_id)
        else:
            services.request_action(session, run_id, WorkerAction(action))


@router.post("/runs/{run_id}/actions/{action}", name="web_run_action")
async def run_action(request: Request, ctx: ContextDep, run_id: int, action: str) -> Response:
    """Cancel / resume / checkpoint now / stop gracefully, answered as ``{"ok", "message"}``."""
    if action not in _ACTION_DONE:
        return JSONResponse({"ok": False, "message": f"unknown action {action!r}"}, status_code=404)
    viewer = await run_in_threadpool(_viewer, request, ctx)
    try:
        check_csrf(request, None)
    except CsrfError as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=403)
    if not viewer.can_act:
        return JSONResponse({"ok": False, "message": "sign in to act on runs"}, status_code=401)
    try:
        await run_in_threadpool(_act, ctx, run_id, action)
    except RunNotFound as exc:
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=404)
    except DomainError as exc:  # InvalidTransition, Conflict: the run is not in a state for this
        return JSONResponse({"ok": False, "message": str(exc)}, status_code=409)
    return JSONResponse({"ok": True, "message": _ACTION_DONE[action]})


# ---- sign in / out -----------------------------------------------------------------------------


@router.get("/login", name="web_login_form")
def login_page(request: Request, ctx: ContextDep, next: str = "/") -> Response:
    viewer = _viewer(request, ctx)
    return render(request, "login.html", {"next": safe_next(next), "error": None}, viewer=viewer)


@router.post("/login", name="web_login")
async def login(request: Request, ctx: ContextDep) -> Response:
    form = await _read_form(request)
    if (refused := _csrf_refusal(request, form, None)) is not None:
        return refused
    token = form.get("token", "").strip()
    target = safe_next(form.get("next"))
    user = await run_in_threadpool(_check_token, ctx, token)
    if user is None:
        viewer = await run_in_threadpool(_viewer, request, ctx)
        context = {"next": target, "error": "That token is not valid (or was revoked)."}
        return render(request, "login.html", context, viewer=viewer, status_code=401)
    response = RedirectResponse(target, status_code=303)
    set_session(request, response, token)
    return response


def _check_token(ctx: WebContext, token: str) -> str | None:
    if not token:
        return None
    with ctx.session_factory() as session:
        return queries.user_for_token(session, token)


@router.post("/logout", name="web_logout")
async def logout(request: Request) -> Response:
    form = await _read_form(request)
    if (refused := _csrf_refusal(request, form, None)) is not None:
        return refused
    response = RedirectResponse(request.app.url_path_for("web_runs"), status_code=303)
    clear_session(request, response)
    return response


# ---- static files ------------------------------------------------------------------------------


@router.get("/static/{path:path}", name="web_static")
def static(path: str) -> Response:
    """The dashboard's CSS/JS and the vendored chart library. URLs carry a content hash: cache long."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        raise HTTPException(404)
    return FileResponse(target, headers={"Cache-Control": "public, max-age=86400"})
