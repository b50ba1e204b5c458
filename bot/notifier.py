"""Posts job events to Slack threads. Until Slack tokens are configured, events stay in SQL."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from tunebot.settings import Settings

log = logging.getLogger(__name__)


def deliver_pending(settings: Settings, engine: Engine, job_id: int) -> int:
    """Deliver the job's undelivered events; without a bot token they stay in SQL for later."""
    if settings.slack_bot_token is None:
        log.info("no SLACK_BOT_TOKEN: job %s's events stay in SQL", job_id)
        return 0
    raise NotImplementedError("Slack delivery arrives with the Slack bot work")
