"""delivery failures and form states: a job's Slack delivery state, prompt-form state kept
server-side

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

jobs gains its Slack delivery state (failures in a row, the last error, when delivery stopped
for good); existing rows start at 0 failures, not failed. form_states keeps a Slack form's
state that does not fit the view's 3,000-character private_metadata, under a random key, until
it expires.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'form_states',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('team_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key'),
    )
    with op.batch_alter_table('form_states', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_form_states_expires_at'), ['expires_at'],
                              unique=False)

    # Plain ALTER TABLE … ADD COLUMN: rebuilding `jobs` the batch way (SQLite) would drop a
    # table that job_events, metrics and case_results point at.
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        # Existing rows: no failures yet (the server default fills them; the model sets 0).
        batch_op.add_column(sa.Column('delivery_attempts', sa.Integer(), nullable=False,
                                      server_default=sa.text('0')))
        batch_op.add_column(sa.Column('delivery_error',
                                      sqlmodel.sql.sqltypes.AutoString(length=512),
                                      nullable=True))
        batch_op.add_column(sa.Column('delivery_failed_at', sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35), for the same reason.
    with op.batch_alter_table('jobs', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('delivery_failed_at')
        batch_op.drop_column('delivery_error')
        batch_op.drop_column('delivery_attempts')

    with op.batch_alter_table('form_states', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_form_states_expires_at'))

    op.drop_table('form_states')
