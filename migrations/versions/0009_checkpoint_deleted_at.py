"""checkpoints.deleted_at: which checkpoints the worker's retention removed from disk

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:00:00.000000

A checkpoint row used to stay "committed" for ever although the worker keeps only the newest
``keep_last_k`` on disk. Rank 0 now reports each deletion (``checkpoints_deleted``) and the row
records when (``deleted_at``; NULL: on disk, or deleted before the worker reported deletions).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('checkpoints') as batch:
        batch.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints') as batch:
        batch.drop_column('deleted_at')
