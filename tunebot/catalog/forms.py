"""Form state kept server-side: what a form (the prompt form in Slack) must get back on
submission but that does not fit where the transport would carry it (Slack's private_metadata
holds 3,000 characters). Stored under a random key, for the user and workspace that opened the
form, until it expires.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.models import FormState, utcnow

TTL_SECONDS = 24 * 3600.0  # a form left open over a working day still saves


def put_form_state(*, engine: Engine, team_id: str, user_id: str, data: dict[str, Any],
                   ttl_seconds: float = TTL_SECONDS) -> str:
    """Keep `data` for this user's form; returns the key to carry instead. Expired states are
    purged on the way, so the table holds only live forms."""
    key = secrets.token_urlsafe(24)
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(delete(FormState).where(col(FormState.expires_at) < now))
        session.add(FormState(key=key, team_id=team_id, user_id=user_id, data=data,
                              created_at=now, expires_at=now + timedelta(seconds=ttl_seconds)))
    return key


def get_form_state(*, engine: Engine, key: str, team_id: str,
                   user_id: str) -> dict[str, Any] | None:
    """The state kept under `key` for this user and workspace, or None (unknown, someone
    else's, or expired)."""
    with session_scope(engine) as session:
        row = session.execute(
            select(FormState).where(col(FormState.key) == key[:64],
                                    col(FormState.team_id) == team_id,
                                    col(FormState.user_id) == user_id,
                                    col(FormState.expires_at) > utcnow())
        ).scalars().first()
        return dict(row.data) if row is not None else None


def drop_form_state(*, engine: Engine, key: str) -> None:
    """Forget a form's state (its form was saved)."""
    with session_scope(engine) as session:
        session.execute(delete(FormState).where(col(FormState.key) == key[:64]))
