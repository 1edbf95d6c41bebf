"""bigint counters: tokens seen and checkpoint sizes outgrow PostgreSQL's 32-bit INTEGER

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 02:50:00.000000

A run trains past 2**31 - 1 tokens (about 2 billion) within hours, and a sharded checkpoint of a
1B-parameter model with AdamW moments is ~16 GB: both overflowed ``INTEGER`` on PostgreSQL (the
report was refused with a 500). SQLite's INTEGER is already 64-bit; batch mode rewrites the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

COLUMNS = (("runs", "tokens_seen"), ("checkpoints", "tokens_seen"), ("checkpoints", "size_bytes"), ("metrics", "tokens_seen"))


def upgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
