"""The web dashboard: server-rendered pages over the controller's DB and REST API.

``create_app`` mounts it with ``app.include_router(web_router)``; the router serves its own static
files (CSS, JS and the vendored uPlot under ``static/vendor/``), so the dashboard works offline
with no build step. The router is imported on first use, so the pure helpers of this package
(downsampling, formatting) import without FastAPI or the DB models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    web_router: APIRouter

__all__ = ["web_router"]


def __getattr__(name: str) -> Any:
    if name == "web_router":
        from controller.web.routes import router

        return router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
