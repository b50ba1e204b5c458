"""team guidelines and Slack identities: a workspace's prompt guidelines, and the workspace a
bot token belongs to

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

team_guidelines holds each workspace's rules from prompts/guidelines.yaml (until one is
imported the built-in defaults apply, so existing workspaces keep saving as before).
slack_identities caches auth.test's answer per bot token (by its sha256), so the CLI acts on
the bot's own workspace without asking Slack every time. Both are new tables: existing rows
are untouched.
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'team_guidelines',
        sa.Column('team_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('rules', sa.JSON(), nullable=True),
        sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('team_id'),
    )
    op.create_table(
        'slack_identities',
        sa.Column('token_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('team_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('team_name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('checked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('token_sha256'),
    )


def downgrade() -> None:
    op.drop_table('slack_identities')
    op.drop_table('team_guidelines')
