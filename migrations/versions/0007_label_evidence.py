"""label evidence: why a label moved — the promotion gate's evidence, or a forced move's reason

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

label_history gains reason (text), forced (bool) and evidence (JSON: the paired comparison
that allowed the move). Existing rows keep their moves with an empty reason, not forced and no
evidence — the moves happened before the gate existed.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('label_history', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('reason', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('forced', sa.Boolean(), nullable=False,
                                      server_default=sa.text('false')))
        batch_op.add_column(sa.Column('evidence', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('label_history', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('evidence')
        batch_op.drop_column('forced')
        batch_op.drop_column('reason')
