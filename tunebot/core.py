"""The request context every command runs in: settings, the database, a way to wake workers,
who asks (Actor) and what a command produced (Outcome). `build_core` makes one per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from tunebot.db import make_engine
from tunebot.jobs.kinds import Waker
from tunebot.jobs.queue import Sender, make_celery
from tunebot.models import Job
from tunebot.replies import Reply
from tunebot.settings import Settings


@dataclass
class Actor:
    """Who asks, from where: workspace, user, and the Slack context a job answers in."""

    team_id: str
    user_id: str
    is_admin: bool = False
    channel: str | None = None
    thread_ts: str | None = None
    response_url: str | None = None
    idempotency_key: str | None = None
    active_key: str | None = None
    usergroups: frozenset[str] = frozenset()


@dataclass
class Core:
    """What every handler needs: settings, the database, and a way to wake workers."""

    settings: Settings
    engine: Engine
    waker: Waker | None


@dataclass
class Outcome:
    """What a command produced: a reply, and the job it created or found (if any)."""

    reply: Reply
    job: Job | None = None
    created: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def build_core(settings: Settings) -> Core:
    """Engine and task sender for a CLI or bot process (workers build theirs after fork)."""
    return Core(settings, make_engine(settings.database_url), Sender(make_celery(settings)))


def cli_actor(settings: Settings) -> Actor:
    """The CLI acts as an admin of TUNEBOT_CLI_TEAM."""
    return Actor(team_id=settings.cli_team, user_id=settings.cli_user, is_admin=True)
