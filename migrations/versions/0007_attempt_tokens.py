"""worker tokens belong to one attempt

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00.000000

``api_tokens.attempt``: the attempt a worker token was issued for. A report is believed only for
that attempt or an earlier one of the same run (a spool the successor delivers); a later attempt
is refused (controller/services/claims.py). Tokens issued before this migration have none and may
report for any attempt of their run until they expire (at most a week plus a walltime).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("attempt")
