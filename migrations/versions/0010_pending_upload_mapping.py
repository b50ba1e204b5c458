"""pending upload mapping: `/dataset add NAME expected=COLUMN` remembered until the file arrives

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

pending_uploads gains expected_column (nullable, up to 128 characters): the column read as the
expected answer when the user's next file becomes the dataset. Existing pending requests keep
no mapping (the aliases label/answer/… still apply), as they had none when made.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pending_uploads', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('expected_column',
                                      sqlmodel.sql.sqltypes.AutoString(length=128),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pending_uploads', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('expected_column')
