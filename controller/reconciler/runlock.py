"""Per-run locks that let several controllers share one PostgreSQL database without double work.

Two controllers (e.g. an old and a new one during a rolling restart, or an HA pair) run their
reconcilers against the same database. The database's unique indexes already refuse a second
*intent* for the same attempt number, but they cannot see the gap between an intent and the
scheduler's answer: controller B's crash recovery (``recover_submitting``) would find A's fresh
SUBMITTING row, ask the scheduler for its job name before A's ``sbatch`` has returned, and submit
it a second time. So every submission — intent, scheduler call, recorded job id — runs under a
per-run lock, and so does the ending of an attempt:

* ``run_claim``: a session-level PostgreSQL advisory lock on its own connection, held across the
  scheduler call (which may take seconds) without holding a transaction or a row lock open, so the
  API's reports are never blocked by it. A controller that dies loses its connection and with it
  the lock: the other one then recovers the interrupted intent.
* ``lock_run_for_transaction``: the same lock, transaction-scoped, for a short transaction (the
  end of an attempt); released by the commit.

Both *try* the lock and never wait: whoever holds it is doing the work, and the other controller
skips the run for this pass (its next pass sees the result). The key includes the database and
schema, so test schemas and several deployments on one server never contend.

SQLite has a single writer and one controller per database file: there both are no-ops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# hashtextextended: PostgreSQL >= 11. A hash collision only makes two runs contend now and then.
_KEY = "hashtextextended('pyrecover.run:' || current_database() || '.' || current_schema() || '.' || :run, 0)"
_TRY_LOCK = text(f"SELECT pg_try_advisory_lock({_KEY})")
_UNLOCK = text(f"SELECT pg_advisory_unlock({_KEY})")
_TRY_XACT_LOCK = text(f"SELECT pg_try_advisory_xact_lock({_KEY})")


def _is_postgresql(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "postgresql"


@contextlib.contextmanager
def run_claim(session_factory: Callable[[], Session], run_id: int) -> Iterator[bool]:
    """Hold run ``run_id``'s lock for the block; yields ``False`` if another controller holds it."""
    with session_factory() as probe:  # no connection is opened just to find the engine
        bind = probe.get_bind()
    if not _is_postgresql(bind):
        yield True
        return
    with bind.engine.connect() as conn:
        params = {"run": str(run_id)}
        got = bool(conn.scalar(_TRY_LOCK, params))
        conn.commit()  # keep no transaction open while the lock is held
        if not got:
            log.debug("run %s is being handled by another controller; skipping it this pass", run_id)
            yield False
            return
        try:
            yield True
        finally:
            try:
                conn.scalar(_UNLOCK, params)
                conn.commit()
            except Exception:
                # Never hand a connection that may still hold the lock back to the pool.
                log.warning("could not release the lock of run %s; dropping its connection", run_id)
                conn.invalidate()


def lock_run_for_transaction(session: Session, run_id: int) -> bool:
    """Take run ``run_id``'s lock until ``session``'s transaction ends; ``False`` if someone holds it."""
    if not _is_postgresql(session.get_bind()):
        return True
    return bool(session.scalar(_TRY_XACT_LOCK, {"run": str(run_id)}))
