"""What slash commands and mentions share: build the actor, run the command, shape errors."""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from sqlalchemy.exc import DBAPIError

from bot.usergroups import with_usergroups
from tunebot.commands import Command
from tunebot.core import Actor, Core, Outcome
from tunebot.dispatch import execute
from tunebot.replies import Reply, error

log = logging.getLogger(__name__)
UNAVAILABLE = ("tunebot is temporarily unavailable (its database or queue is not answering); "
               "nothing was started — please try again in a minute.")


def actor_for(core: Core, *, team_id: str, user_id: str, channel: str | None,
              thread_ts: str | None, response_url: str | None, key: str | None) -> Actor:
    """The actor of a Slack request; admins come from TUNEBOT_ADMINS."""
    return Actor(team_id=team_id, user_id=user_id, is_admin=core.settings.is_admin(user_id),
                 channel=channel, thread_ts=thread_ts, response_url=response_url,
                 idempotency_key=key)


def run(cmd: Command, actor: Actor, core: Core, client: WebClient | None = None) -> Outcome:
    """Execute a command; an outage becomes a plain 'temporarily unavailable' answer.

    For commands limited to TUNEBOT_FINETUNE_ALLOWED, the actor's usergroups among those ids
    are looked up first (usergroups.users.list, cached).
    """
    actor = with_usergroups(client, actor, cmd.family, cmd.action, core.settings)
    try:
        return execute(cmd, actor, core)
    except Exception as exc:
        return Outcome(failure_reply(exc, "command"))


OUTAGES: tuple[type[BaseException], ...] = (DBAPIError, OSError, KombuOperationalError,
                                            RedisError, TimeoutError)


def failure_reply(exc: BaseException, what: str) -> Reply:
    """An outage (database, broker) says "temporarily unavailable"; a bug says so, logged."""
    if isinstance(exc, OUTAGES):
        log.warning("%s failed: %s: %s", what, exc.__class__.__name__, str(exc)[:200])
        return error(UNAVAILABLE)
    log.exception("%s failed", what)
    return error(f"tunebot hit an internal error ({exc.__class__.__name__}) and logged it; "
                 "nothing was started. Please tell your tunebot admin.")


def job_reply(outcome: Outcome) -> Reply:
    """What the requester sees about the job their command created or found."""
    job = outcome.job
    assert job is not None
    if outcome.created:
        text = f"Queued {job.title} as job #{job.id} — I'll answer in a thread here."
    else:
        text = f"That request is already job #{job.id} ({job.status})."
    return Reply(text=text, ephemeral=True)


def retry_num(request: BoltRequest) -> int:
    """Slack's X-Slack-Retry-Num of a re-delivered event (0 for the first delivery)."""
    values = request.headers.get("x-slack-retry-num") or ["0"]
    try:
        return int(values[0])
    except ValueError:
        return 0
