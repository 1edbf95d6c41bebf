"""Who is looking at the dashboard, and what they may do.

* A signed-in browser carries a session id (``controller/services/sessions.py``); the session's
  user, with their role, is the ``Principal`` every rule of ``controller/access.py`` is applied
  to, exactly as for an API call with that user's token.
* ``auth_required`` off (``pyrecover serve --insecure-no-auth``, loopback only): anyone who can
  reach the port views and acts, as an admin, like the API itself.
* ``open_read_only``: anyone may look at every run; acting needs a sign-in.
* Otherwise every page but the sign-in page redirects there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request

from controller.auth import no_auth_principal, open_read_principal, user_principal
from controller.services.sessions import resolve_session
from controller.settings import Settings
from controller.web.security import session_secret
from controller.web.views import Viewer


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    session_factory: Callable[[], Session]


def web_context(request: Request) -> WebContext:
    """Settings and session factory the app was created with (``create_app`` puts them on app.state)."""
    state = request.app.state
    return WebContext(settings=state.settings, session_factory=state.session_factory)


def resolve_viewer(request: Request, settings: Settings, session: Session) -> Viewer:
    auth_required = settings.auth_required
    signed = resolve_session(session, session_secret(request))
    if signed is not None:
        principal = user_principal(signed.user, settings, token_id=signed.token_id)
        return Viewer(
            logged_in=True,
            name=signed.user.name,
            auth_required=auth_required,
            can_view=True,
            can_act=principal.may_create_runs,
            principal=principal,
        )
    if not auth_required:
        return Viewer(
            logged_in=False,
            name=None,
            auth_required=False,
            can_view=True,
            can_act=True,
            principal=no_auth_principal(),
        )
    if settings.open_read_only:
        return Viewer(
            logged_in=False,
            name=None,
            auth_required=True,
            can_view=True,
            can_act=False,
            principal=open_read_principal(),
        )
    return Viewer.anonymous()
