"""`/dataset add NAME` in Slack without a file: the user's next upload in that channel, within
PENDING_MINUTES, becomes dataset NAME. The pending requests live in SQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.models import PendingUpload, utcnow

PENDING_MINUTES = 10


def expect_upload(*, engine: Engine, team_id: str, user_id: str, channel: str, name: str) -> None:
    """Remember `/dataset add NAME`: this user's next file in this channel becomes NAME."""
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(update(PendingUpload).where(
            col(PendingUpload.team_id) == team_id, col(PendingUpload.user_id) == user_id,
            col(PendingUpload.channel) == channel, col(PendingUpload.used_at).is_(None))
            .values(used_at=now))  # a newer request replaces an older one
        session.add(PendingUpload(team_id=team_id, user_id=user_id, channel=channel, name=name,
                                  expires_at=now + timedelta(minutes=PENDING_MINUTES)))


def take_pending(*, engine: Engine, team_id: str, user_id: str, channel: str) -> str | None:
    """The dataset name this user asked for here in the last 10 minutes, claimed once."""
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
        return row.name if claimed == 1 else None
