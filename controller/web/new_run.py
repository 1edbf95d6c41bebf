"""The new-run page: a form of every field, a YAML editor of the whole body, and "clone this run".

Both ways in end in the API's own body model (``RunCreate``) and the same domain call
(``services.create_run``), so the rules and the messages are exactly the API's: the form shows them
next to their fields, the YAML editor beside the line that holds the field. ``?clone=ID`` fills
both with a run the viewer may read (another user's run is a 404, as everywhere) under a free name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from controller import access, services
from controller.api.deps import MAX_ID
from controller.api.errors import validation_body
from controller.auth import Principal
from controller.db.models import User
from controller.services.errors import Conflict, InvalidField, QuotaExceeded, RunNotFound
from controller.web import forms, queries
from controller.web.access import WebContext
from controller.web.rendering import render
from controller.web.replies import (
    ContextDep,
    csrf_refusal,
    login_redirect,
    not_found,
    read_form,
    refused,
    viewer_of,
)
from controller.web.runspec import SpecYamlError, dump_yaml, line_of, load_yaml, shown_spec, template_spec
from controller.web.views import Viewer
from shared.schemas import RunCreate

router = APIRouter(include_in_schema=False)

YAML_HEADER = (
    "The whole body of POST /api/v1/runs (what `pyrecover submit FILE` sends).\n"
    "Every field is at the API's default unless it says otherwise; empty (null) ones are required."
)


@dataclass(frozen=True, kw_only=True)
class YamlError:
    line: int | None
    """1-based line of the field in the editor's text (``None``: not found)."""
    field: str
    message: str


@dataclass
class Page:
    """What the page shows (one of the two editors was just submitted, or neither)."""

    values: dict[str, Any]
    errors: forms.FormErrors
    yaml_text: str
    mode: str = "form"
    yaml_errors: list[YamlError] | None = None
    clone_of: str | None = None

    def context(self) -> dict[str, Any]:
        return {
            "nav": "new",
            "sections": forms.SECTIONS,
            "yaml_only": forms.YAML_ONLY,
            "values": self.values,
            "field_errors": self.errors.fields,
            "section_errors": self.errors.sections,
            "form_errors": self.errors.form,
            "open_more": forms.open_sections(self.values, self.errors),
            "yaml_text": self.yaml_text,
            "yaml_errors": self.yaml_errors or [],
            "mode": self.mode,
            "clone_of": self.clone_of,
        }


def _may_create(request: Request, viewer: Viewer) -> Response | None:
    if viewer.principal is None or viewer.principal.read_only:
        return login_redirect(request)
    if not viewer.can_act:
        return refused(request, viewer, f"{viewer.name} is a viewer: viewers cannot create runs.")
    return None


@router.get("/runs/new", name="web_new_run")
def new_run_page(
    request: Request, ctx: ContextDep, clone: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> Response:
    viewer = viewer_of(request, ctx)
    if (refusal := _may_create(request, viewer)) is not None:
        return refusal
    assert viewer.principal is not None
    page = Page(values=forms.default_values(), errors=forms.FormErrors(), yaml_text=_yaml(template_spec()))
    if clone is not None:
        with ctx.session_factory() as session:
            try:
                source = access.readable_run(session, viewer.principal, clone)
            except RunNotFound:
                return not_found(request, viewer, clone)
            spec = shown_spec(source.spec) | {"name": queries.free_name(session, source.name)}
        page = Page(
            values=forms.values_from_spec(spec),
            errors=forms.FormErrors(),
            yaml_text=_yaml(spec),
            clone_of=source.name,
        )
    return render(request, "new_run.html", page.context(), viewer=viewer)


def _yaml(spec: dict[str, Any]) -> str:
    return dump_yaml(spec, header=YAML_HEADER)


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    # Exactly the API's 422 (unknown keys named, no library prefixes); FastAPI puts "body" in front.
    return [{"loc": ["body", *d["loc"]], "msg": d["msg"]} for d in validation_body(exc.errors())["detail"]]


def _yaml_errors(text: str, exc: ValidationError) -> list[YamlError]:
    return [
        YamlError(line=line_of(text, tuple(d["loc"])), field=d["field"] or "body", message=d["msg"])
        for d in validation_body(exc.errors())["detail"]
    ]


@router.post("/runs/new", name="web_create_run")
async def create_run(request: Request, ctx: ContextDep) -> Response:
    viewer = await run_in_threadpool(viewer_of, request, ctx)
    form = await read_form(request)
    if (csrf := csrf_refusal(request, form, viewer)) is not None:
        return csrf
    if (refusal := _may_create(request, viewer)) is not None:
        return refusal
    assert viewer.principal is not None
    if form.get("mode") == "yaml":
        page, body = _from_yaml(form.get("yaml", ""))
    else:
        page, body = _from_form(form)
    if body is None:
        return render(request, "new_run.html", page.context(), viewer=viewer, status_code=422)
    try:
        run_id = await run_in_threadpool(_create, ctx, body, viewer.principal)
    except QuotaExceeded as exc:
        page.errors.form.append(str(exc))
        return render(request, "new_run.html", page.context(), viewer=viewer, status_code=429)
    except (Conflict, InvalidField) as exc:
        _place(page, exc.field, str(exc))
        code = 409 if isinstance(exc, Conflict) else 422
        return render(request, "new_run.html", page.context(), viewer=viewer, status_code=code)
    return RedirectResponse(request.app.url_path_for("web_run", run_id=run_id), status_code=303)


def _from_form(form: dict[str, str]) -> tuple[Page, RunCreate | None]:
    values = forms.values_from_form(form)
    data, unparsed = forms.form_to_body(form)
    page = Page(values=values, errors=forms.FormErrors(), yaml_text=_yaml(template_spec()))
    try:
        body = RunCreate.model_validate(data)
    except ValidationError as exc:
        page.errors = forms.place_errors(422, _validation_errors(exc))
        body = None
    for name, messages in unparsed.items():  # a NAME=value line without '=': no body could say it
        page.errors.fields.setdefault(name, []).extend(messages)
        body = None
    return page, body


def _from_yaml(text: str) -> tuple[Page, RunCreate | None]:
    page = Page(values=forms.default_values(), errors=forms.FormErrors(), yaml_text=text, mode="yaml")
    try:
        data = load_yaml(text)
    except SpecYamlError as exc:
        page.yaml_errors = [YamlError(line=None, field="", message=str(exc))]
        return page, None
    page.values = forms.values_from_spec(data)
    try:
        return page, RunCreate.model_validate(data)
    except ValidationError as exc:
        page.yaml_errors = _yaml_errors(text, exc)
        return page, None


def _place(page: Page, field: str | None, message: str) -> None:
    """A domain error (name taken, a refused path) beside its field in the editor that was used."""
    if page.mode == "yaml":
        loc = tuple(field.split(".")) if field else ()
        line = line_of(page.yaml_text, loc) if loc else None
        page.yaml_errors = [YamlError(line=line, field=field or "", message=message)]
    elif field is not None and field in forms.FIELDS:
        page.errors.fields[field] = [message]
    else:
        page.errors.form.append(message)


def _owner(session: Any, principal: Principal) -> User:
    user = session.get(User, principal.user_id) if principal.user_id is not None else None
    return user if user is not None else services.first_admin(session)


def _create(ctx: WebContext, body: RunCreate, principal: Principal) -> int:
    with ctx.session_factory() as session, session.begin():
        owner = _owner(session, principal)
        return services.create_run(session, body, owner=owner, by=principal.actor, settings=ctx.settings).id
