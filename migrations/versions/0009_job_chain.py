"""job chain: a job's parent (its stages run as child jobs) and the "waiting" status

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

jobs gains parent_id (nullable, indexed; no foreign key, so SQLite needs no table rebuild
while job_events points at jobs): a child job is one stage
of its parent (tunebot/jobs/chain.py). A parent between stages is "waiting": it holds no
worker and no lease, yet stays active, so the unique active_key index now covers 'waiting'
too (a repeated button press still finds it). Existing rows get parent_id NULL and keep their
status. Downgrading fails any job still waiting (the old code has no such status) and drops
the column.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ACTIVE = "status IN ('queued', 'running')"
NEW_ACTIVE = "status IN ('queued', 'running', 'waiting')"


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('parent_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_parent_id'), ['parent_id'], unique=False)
        batch_op.drop_index('uq_jobs_active_key', sqlite_where=sa.text(OLD_ACTIVE),
                            postgresql_where=sa.text(OLD_ACTIVE))
        batch_op.create_index('uq_jobs_active_key', ['active_key'], unique=True,
                              sqlite_where=sa.text(NEW_ACTIVE),
                              postgresql_where=sa.text(NEW_ACTIVE))


def downgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET status = 'failed', error = 'stopped by a schema "
                       "downgrade while waiting for its stages' WHERE status = 'waiting'"))
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        batch_op.drop_index('uq_jobs_active_key', sqlite_where=sa.text(NEW_ACTIVE),
                            postgresql_where=sa.text(NEW_ACTIVE))
        batch_op.create_index('uq_jobs_active_key', ['active_key'], unique=True,
                              sqlite_where=sa.text(OLD_ACTIVE),
                              postgresql_where=sa.text(OLD_ACTIVE))
        batch_op.drop_index(batch_op.f('ix_jobs_parent_id'))
        batch_op.drop_column('parent_id')
