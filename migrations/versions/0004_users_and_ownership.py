"""users, roles and ownership; dashboard sessions and one-time login codes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00.000000

* ``users`` (name, role, optional active-run limit). One user per distinct name of the existing
  user tokens, in the order the names first appeared; the first is an ``admin``, the others
  ``user``. Each user token now belongs to its user (``api_tokens.user_id``).
* ``runs.owner_id`` (NOT NULL): every existing run goes to the first admin. A database with runs
  but no user token gets a user ``admin`` to own them (``pyrecover token create --name admin``
  then gives it a token).
* ``run_shares``, ``web_sessions`` (the dashboard's server-side sessions; the old cookie held the
  API token itself and is no longer read, so every browser signs in again) and ``login_codes``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ROLE = sa.Enum('admin', 'user', 'viewer', name='role', native_enum=False, length=16)


def _now(bind: sa.engine.Connection) -> datetime:
    now = datetime.now(UTC)
    return now.replace(tzinfo=None) if bind.dialect.name == "sqlite" else now


def upgrade() -> None:
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('role', ROLE, nullable=False),
        sa.Column('active_run_limit', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('user_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_api_tokens_user_id_users', 'users', ['user_id'], ['id'], ondelete='CASCADE')
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('owner_id', sa.Integer(), nullable=True))

    bind = op.get_bind()
    users = sa.table(
        'users',
        sa.column('id', sa.Integer()),
        sa.column('name', sa.String()),
        sa.column('role', sa.String()),
        sa.column('created_at', sa.DateTime()),
    )
    tokens = sa.table(
        'api_tokens', sa.column('id', sa.Integer()), sa.column('name', sa.String()),
        sa.column('kind', sa.String()), sa.column('user_id', sa.Integer()),
    )
    runs = sa.table('runs', sa.column('id', sa.Integer()), sa.column('owner_id', sa.Integer()))
    names = [
        row[0]
        for row in bind.execute(
            sa.select(tokens.c.name).where(tokens.c.kind == 'user')
            .group_by(tokens.c.name).order_by(sa.func.min(tokens.c.id))
        )
    ]
    has_runs = bind.execute(sa.select(runs.c.id).limit(1)).first() is not None
    if not names and has_runs:
        names = ['admin']
    now = _now(bind)
    for i, name in enumerate(names):
        bind.execute(users.insert().values(name=name, role='admin' if i == 0 else 'user', created_at=now))
        user_id = bind.execute(sa.select(users.c.id).where(users.c.name == name)).scalar_one()
        bind.execute(
            tokens.update().where(tokens.c.kind == 'user', tokens.c.name == name).values(user_id=user_id)
        )
    if names:
        first = bind.execute(sa.select(users.c.id).where(users.c.name == names[0])).scalar_one()
        bind.execute(runs.update().values(owner_id=first))

    with op.batch_alter_table('runs') as batch:
        batch.alter_column('owner_id', existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key('fk_runs_owner_id_users', 'users', ['owner_id'], ['id'])
        batch.create_index('ix_runs_owner_id_id', ['owner_id', 'id'], unique=False)

    op.create_table(
        'run_shares',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('shared_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['shared_by_id'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'user_id', name='uq_run_shares_run_user'),
    )
    op.create_index('ix_run_shares_user_id', 'run_shares', ['user_id'], unique=False)
    op.create_table(
        'web_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('token_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('id_hash'),
    )
    op.create_index('ix_web_sessions_expires_at', 'web_sessions', ['expires_at'], unique=False)
    op.create_table(
        'login_codes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('code_hash'),
    )


def downgrade() -> None:
    op.drop_table('login_codes')
    op.drop_index('ix_web_sessions_expires_at', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index('ix_run_shares_user_id', table_name='run_shares')
    op.drop_table('run_shares')
    with op.batch_alter_table('runs') as batch:
        batch.drop_index('ix_runs_owner_id_id')
        batch.drop_constraint('fk_runs_owner_id_users', type_='foreignkey')
        batch.drop_column('owner_id')
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_constraint('fk_api_tokens_user_id_users', type_='foreignkey')
        batch.drop_column('user_id')
    op.drop_table('users')
