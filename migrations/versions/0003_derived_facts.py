"""derived facts are derived, not stored: failure budget, goodput, checkpoint "verified"

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00.000000

* ``runs.failures_without_progress`` was a counter written from three places; the failure budget
  is now read off the attempt chain since the user last resumed the run, which
  ``runs.resumed_after_attempt`` records (existing runs: their latest attempt if the counter was
  reset by a resume is unknowable, so 0 = count every attempt, as the chain shows).
* the stored goodput copies (``runs.goodput*``, ``attempts.allocated_s`` ...) are computed when
  read (controller/services/goodput.py), so the API, the dashboard and /metrics cannot disagree.
* ``checkpoints.verified`` was always true.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

RUN_GOODPUT = (("goodput_allocated_s", False), ("goodput_productive_s", False), ("goodput", True))
ATTEMPT_GOODPUT = ("allocated_s", "queue_wait_s", "productive_committed_s", "lost_work_s")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("resumed_after_attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_column("failures_without_progress")
        for name, _ in RUN_GOODPUT:
            batch.drop_column(name)
    with op.batch_alter_table("attempts") as batch:
        for name in ATTEMPT_GOODPUT:
            batch.drop_column(name)
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("verified")


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("attempts") as batch:
        for name in ATTEMPT_GOODPUT:
            batch.add_column(sa.Column(name, sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("runs") as batch:
        for name, nullable in RUN_GOODPUT:
            batch.add_column(sa.Column(name, sa.Float(), nullable=nullable, server_default=None if nullable else "0"))
        batch.add_column(sa.Column("failures_without_progress", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_column("resumed_after_attempt")
