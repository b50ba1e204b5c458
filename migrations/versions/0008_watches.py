"""watches: regression watches, each a prompt reference re-tested on a dataset on a schedule

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

One new table. Its schedule is in SQL (next_run_at, claimed by a compare-and-set on run_seq),
so watches survive restarts and several beat processes never start one run twice; the last
accepted run (its job, per-case pass list, prompt version, model and dataset version and
hash) is what each new run is compared with. Existing rows of other tables are untouched.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    when = sqlmodel.sql.sqltypes.UTCDateTime
    op.create_table(
        'watches',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('team_id', text(length=32), nullable=False),
        sa.Column('owner', text(length=64), nullable=False),
        sa.Column('prompt_ref', text(length=140), nullable=False),
        sa.Column('prompt_name', text(length=64), nullable=False),
        sa.Column('dataset', text(length=64), nullable=False),
        sa.Column('model', text(length=256), nullable=True),
        sa.Column('channel', text(length=64), nullable=True),
        sa.Column('interval_seconds', sa.Integer(), nullable=False),
        sa.Column('next_run_at', when(), nullable=False),
        sa.Column('run_seq', sa.Integer(), nullable=False),
        sa.Column('state', text(length=16), nullable=False),
        sa.Column('note', sa.Text(), nullable=False, server_default=''),
        sa.Column('created_at', when(), nullable=False),
        sa.Column('updated_at', when(), nullable=False),
        sa.Column('stopped_at', when(), nullable=True),
        sa.Column('stopped_by', text(length=64), nullable=True),
        sa.Column('last_job_id', sa.Integer(), nullable=True),
        sa.Column('last_run_at', when(), nullable=True),
        sa.Column('last_outcome', text(length=32), nullable=True),
        sa.Column('last_accuracy', sa.Float(), nullable=True),
        sa.Column('accepted_job_id', sa.Integer(), nullable=True),
        sa.Column('accepted_at', when(), nullable=True),
        sa.Column('accepted_version', sa.Integer(), nullable=True),
        sa.Column('accepted_model', text(length=256), nullable=True),
        sa.Column('accepted_dataset_version', sa.Integer(), nullable=True),
        sa.Column('accepted_dataset_hash', text(length=64), nullable=True),
        sa.Column('accepted_accuracy', sa.Float(), nullable=True),
        sa.Column('accepted_passes', sa.JSON(), nullable=True),
        sa.Column('alert_job_id', sa.Integer(), nullable=True),
        sa.Column('alert_passes', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('watches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_watches_team_id'), ['team_id'], unique=False)
        batch_op.create_index('ix_watches_state_next_run_at', ['state', 'next_run_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('watches', schema=None) as batch_op:
        batch_op.drop_index('ix_watches_state_next_run_at')
        batch_op.drop_index(batch_op.f('ix_watches_team_id'))
    op.drop_table('watches')
