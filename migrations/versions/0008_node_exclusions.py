"""per-run node exclusions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:00:00.000000

``node_exclusions``: the hosts a run's next attempts keep off (``sbatch --exclude``) after a node
failure, a hang naming the host, or a fault the worker pins on it; each expires after the run's
``policy.exclude_node_seconds`` and an admin may clear them (controller/reconciler/exclusions.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'node_exclusions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'host', name='uq_node_exclusions_run_host'),
    )


def downgrade() -> None:
    op.drop_table('node_exclusions')
