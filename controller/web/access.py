"""Who is looking at the dashboard, and what they may do.

* ``auth_required`` off (a loopback bind): anyone who can reach the port may view and act, as
  with the API itself.
* ``auth_required`` on: acting needs a signed-in session (a valid API token in the session
  cookie); viewing too, unless ``open_read_only`` lets anyone look.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session
from starlette.requests import Request

from controller.settings import Settings
from controller.web import queries
from controller.web.security import session_token
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
    token = session_token(request)
    user = queries.user_for_token(session, token) if token else None
    if user is not None:
        return Viewer(
            logged_in=True, name=user, token=token, auth_required=auth_required, can_view=True, can_act=True
        )
    if not auth_required:
        return Viewer(
            logged_in=False, name=None, token=None, auth_required=False, can_view=True, can_act=True
        )
    return Viewer(
        logged_in=False,
        name=None,
        token=None,
        auth_required=True,
        can_view=settings.open_read_only,
        can_act=False,
    )
