"""A run's files to take away: its metric series as CSV, its spec as YAML.

Both are behind the run page's rules: a signed-out browser goes to the sign-in page, another
user's run is the same 404 as a missing one (``controller/access.py:readable_run``). The CSV holds
every point the run reported (the charts show a downsampled copy), streamed from the database a
few thousand rows at a time, so its size never sits in memory; it holds numbers and times only, so
no cell can be read as a spreadsheet formula. The YAML is the spec exactly as the API shows it
(``controller/web/runspec.py:shown_spec``): ``pyrecover submit FILE --name NEW`` submits a copy.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response, StreamingResponse

from controller import access
from controller.db.models import Metric, Run
from controller.services.errors import RunNotFound
from controller.web.access import WebContext, resolve_viewer
from controller.web.replies import ContextDep, RunIdPath, login_redirect, not_found
from controller.web.runspec import dump_yaml, shown_spec

router = APIRouter(include_in_schema=False)

CSV_COLUMNS = (
    "step",
    "attempt",
    "time",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "step_time",
    "mfu",
    "tokens_seen",
)
CSV_BATCH = 5000


def _readable(request: Request, ctx: WebContext, run_id: int) -> Run | Response:
    """The run if the viewer may read it, else the response to give instead."""
    with ctx.session_factory() as session:
        viewer = resolve_viewer(request, ctx.settings, session)
        if not viewer.can_view or viewer.principal is None:
            return login_redirect(request)
        try:
            run = access.readable_run(session, viewer.principal, run_id)
        except RunNotFound:
            return not_found(request, viewer, run_id)
        session.expunge(run)
        return run


def _attachment(filename: str) -> dict[str, str]:
    # Run names are validated (letters, digits, . _ -); a row from elsewhere is made safe anyway.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return {"Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "no-store"}


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def metric_rows(ctx: WebContext, run_id: int) -> Iterator[str]:
    """The CSV text of every metric point of ``run_id``, in step order, a batch of rows at a time."""
    columns = [getattr(Metric, name) for name in CSV_COLUMNS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue()
    with ctx.session_factory() as session:
        query = select(*columns).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id)
        result = session.execute(query.execution_options(yield_per=CSV_BATCH))
        for batch in result.partitions():
            out.seek(0)
            out.truncate()
            writer.writerows([_cell(v) for v in row] for row in batch)
            yield out.getvalue()


@router.get("/runs/{run_id}/metrics.csv", name="web_run_metrics_csv")
def metrics_csv(request: Request, ctx: ContextDep, run_id: RunIdPath) -> Response:
    """Every metric point of the run (``step,attempt,time,loss,lr,...``), one row each."""
    run = _readable(request, ctx, run_id)
    if isinstance(run, Response):
        return run
    headers = _attachment(f"{run.name}-metrics.csv")
    return StreamingResponse(metric_rows(ctx, run_id), media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/runs/{run_id}/config.yaml", name="web_run_config")
def config_yaml(request: Request, ctx: ContextDep, run_id: RunIdPath) -> Response:
    """The run's spec as YAML: the raw form of the page's configuration table."""
    run = _readable(request, ctx, run_id)
    if isinstance(run, Response):
        return run
    header = (
        f"pyrecover run {run.name} (#{run.id}), as the API shows it.\n"
        f"Submit a copy: pyrecover submit {run.name}.yaml --name NEW-NAME"
    )
    text = dump_yaml(shown_spec(run.spec), header=header)
    return Response(text, media_type="application/yaml", headers=_attachment(f"{run.name}.yaml"))
