"""`/dataset add NAME [expected=COLUMN]` in Slack without a file: the user's next upload in
that channel, within PENDING_MINUTES, becomes dataset NAME (read with that column as the expected
answer). The pending requests live in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.models import PendingUpload, utcnow

PENDING_MINUTES = 10
MAX_COLUMN = 128  # characters in a column name given as expected=COLUMN


@dataclass(frozen=True)
class Pending:
    """A claimed request: the dataset name, and the column named as the expected answer."""

    name: str
    expected_column: str | None = None


def expect_upload(*, engine: Engine, team_id: str, user_id: str, channel: str, name: str,
                  expected_column: str | None = None) -> None:
    """Remember `/dataset add NAME [expected=COLUMN]`: this user's next file in this channel
    becomes NAME, read with COLUMN as the expected answer."""
    if expected_column is not None and not 1 <= len(expected_column) <= MAX_COLUMN:
        raise UserError(f"expected= must name a column of 1 to {MAX_COLUMN} characters (got "
                        f"{len(expected_column)})", "/dataset add NAME [expected=COLUMN]")
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(update(PendingUpload).where(
            col(PendingUpload.team_id) == team_id, col(PendingUpload.user_id) == user_id,
            col(PendingUpload.channel) == channel, col(PendingUpload.used_at).is_(None))
            .values(used_at=now))  # a newer request replaces an older one
        session.add(PendingUpload(team_id=team_id, user_id=user_id, channel=channel, name=name,
                                  expected_column=expected_column,
                                  expires_at=now + timedelta(minutes=PENDING_MINUTES)))


def take_pending(*, engine: Engine, team_id: str, user_id: str, channel: str) -> Pending | None:
    """What this user asked for here in the last 10 minutes (name, mapping), claimed once."""
    now = utcnow()
    with session_scope(engine) as session:
        row = session.scalars(select(PendingUpload).where(
            col(PendingUpload.team_id) == team_id, col(PendingUpload.user_id) == user_id,
            col(PendingUpload.channel) == channel, col(PendingUpload.used_at).is_(None),
            col(PendingUpload.expires_at) > now)
            .order_by(col(PendingUpload.id).desc())).first()
        if row is None:
            return None
        claimed = session.exec(update(PendingUpload).where(
            col(PendingUpload.id) == row.id, col(PendingUpload.used_at).is_(None))
            .values(used_at=now)).rowcount
        return Pending(row.name, row.expected_column) if claimed == 1 else None
