"""@tunebot mentions: the same grammar, answered in the thread where the bot was mentioned."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import App as BoltApp
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient

from bot.blocks import fallback_text, reply_blocks
from bot.listeners.common import actor_for, job_reply, retry_num, run
from tunebot.commands import parse
from tunebot.core import Core
from tunebot.errors import UserError
from tunebot.replies import error

MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def register(app: BoltApp, core: Core) -> None:
    """Register the app_mention listener."""

    @app.event("app_mention")
    def on_mention(body: dict[str, Any], event: dict[str, Any], client: WebClient,
                   request: BoltRequest) -> None:
        """Run the mentioned command; a job answers in this thread."""
        text = MENTION.sub(" ", event.get("text", "")).strip()
        channel = event["channel"]
        thread = event.get("thread_ts") or event["ts"]
        team = body.get("team_id") or event.get("team", "")
        retried = retry_num(request) > 0
        try:
            cmd = parse(text, family="tunebot")  # `@tunebot ping` and `@tunebot prompt list`
        except UserError as exc:
            if not retried:
                reply = error(str(exc), exc.usage)
                client.chat_postMessage(channel=channel, thread_ts=thread,
                                        text=fallback_text(reply), blocks=reply_blocks(reply))
            return
        # Slack redelivers an event (same event_id) when our ack was late: key jobs by it.
        key = f"event:{team}:{body.get('event_id', '')}" if cmd.spec.job else None
        actor = actor_for(core, team_id=team, user_id=event.get("user", ""), channel=channel,
                          thread_ts=thread, response_url=None, key=key)
        outcome = run(cmd, actor, core, client)
        if outcome.job is not None:
            if outcome.created:
                reply = job_reply(outcome)
                client.chat_postEphemeral(channel=channel, user=actor.user_id,
                                          text=fallback_text(reply))
            return
        if retried:  # the first delivery already answered this read-only command
            return
        client.chat_postMessage(channel=channel, thread_ts=thread,
                                text=fallback_text(outcome.reply),
                                blocks=reply_blocks(outcome.reply))
