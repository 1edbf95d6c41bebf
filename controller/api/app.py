"""``create_app(settings)``: the FastAPI application (REST API under ``/api/v1``, dashboard, ops).

Nothing is created at import time. The lifespan refuses an unmigrated database and starts the
reconciler (``settings.run_reconciler``), stopping it on shutdown.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, configure_mappers

from controller.api import errors, openapi
from controller.api.limits import BodySizeLimit, LoginThrottle, ReportRateLimiter
from controller.api.routes import logs, ops, reports, runs, shares, tokens, users
from controller.db import check_database_migrated, make_engine, make_session_factory
from controller.metrics import LatencyHistogram
from controller.origins import CrossSiteCheck, HostCheck
from controller.permissions import secure_data_dir
from controller.settings import Settings
from controller.web import web_router

API_PREFIX = "/api/v1"


def _engine_of(session_factory: Callable[[], Session]) -> Engine:
    with session_factory() as session:
        bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def create_app(settings: Settings, *, session_factory: Callable[[], Session] | None = None) -> FastAPI:
    owned_engine: Engine | None = None
    if session_factory is None:
        owned_engine = make_engine(settings)
        session_factory = make_session_factory(owned_engine)
    factory = session_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secure_data_dir(settings.data_dir, settings.database_url)
        check_database_migrated(_engine_of(factory))
        configure_mappers()  # now, not inside the first requests (tens of ms each after a restart)
        reconciler: Any = None
        if settings.run_reconciler:
            from controller.reconciler import Reconciler  # lazy: the API imports without it

            reconciler = Reconciler(settings=settings, session_factory=factory)
            reconciler.start()
        app.state.reconciler = reconciler
        notifier: Any = None
        if settings.run_reconciler and settings.run_notifier:  # background work runs together
            from controller.notify.deliver import Notifier  # lazy, like the reconciler

            notifier = Notifier(settings=settings, session_factory=factory)
            notifier.start()
        try:
            yield
        finally:
            if notifier is not None:
                notifier.stop()
            if reconciler is not None:
                reconciler.stop()
            app.state.reconciler = None
            if owned_engine is not None:
                owned_engine.dispose()

    app = FastAPI(
        title="pyrecover controller",
        version="1",
        summary="Keeps LLM training runs alive across walltime limits, preemptions and failures.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.reconciler = None
    app.state.report_latency = LatencyHistogram()
    app.state.report_events = Counter({"accepted": 0, "duplicates": 0})
    app.state.report_write_lock = threading.Lock()  # SQLite only: see routes/reports.py
    app.state.report_limiter = ReportRateLimiter(
        rate_per_s=settings.report_rate_per_s, burst=settings.report_burst
    )
    app.state.login_throttle = LoginThrottle(failures_per_minute=settings.login_failures_per_minute)
    errors.install(app)
    app.include_router(runs.router, prefix=API_PREFIX)
    app.include_router(logs.router, prefix=API_PREFIX)
    app.include_router(shares.router, prefix=API_PREFIX)
    app.include_router(reports.router, prefix=API_PREFIX)
    app.include_router(users.router, prefix=API_PREFIX)
    app.include_router(tokens.router, prefix=API_PREFIX)
    app.include_router(ops.router, prefix=API_PREFIX)
    app.include_router(ops.router)  # /healthz and /metrics where probes and Prometheus look
    app.include_router(web_router)  # the dashboard is part of the product, never optional
    # Outermost last: the Host check runs first, then the cross-site check, then the size limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(CrossSiteCheck, settings=settings)
    app.add_middleware(HostCheck, settings=settings)
    openapi.install(app, settings)
    return app
