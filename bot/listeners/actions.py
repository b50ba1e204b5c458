"""Buttons on job messages: Promote to production, Re-run, Cancel job, Compare with production."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack
from slack_bolt import App as BoltApp
from slack_sdk import WebClient

from bot.blocks import fallback_text
from bot.listeners.common import actor_for, failure_reply
from bot.usergroups import with_usergroups
from tunebot.buttons import CANCEL, COMPARE_PRODUCTION, PROMOTE, RERUN, run_action
from tunebot.core import Core
from tunebot.replies import Reply

JOB_BUTTONS = re.compile(f"^({RERUN}|{CANCEL}|{PROMOTE}|{COMPARE_PRODUCTION})$")


def register(app: BoltApp, core: Core) -> None:
    """Register the job buttons."""

    @app.action(JOB_BUTTONS)
    def on_button(ack: Ack, body: dict[str, Any], action: dict[str, Any],
                  client: WebClient) -> None:
        """Ack at once, then do what the button stands for and tell the clicker."""
        ack()
        team = (body.get("team") or {}).get("id") or body.get("user", {}).get("team_id", "")
        user = body["user"]["id"]
        container = body.get("container") or {}
        channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
        message_ts = container.get("message_ts") or (body.get("message") or {}).get("ts", "")
        action_id = action["action_id"]
        # One job per (workspace, message, button, user) while it is active: a double click
        # finds the first click's job; a click after it ended starts a new one.
        active = f"button:{team}:{message_ts}:{action_id}:{user}"[:255]
        actor = actor_for(core, team_id=team, user_id=user, channel=channel, thread_ts=None,
                          response_url=body.get("response_url"), key=None)
        actor.active_key = active
        try:
            outcome = run_action(action_id, action.get("value", ""), actor, core,
                                 lambda who, fam, act: with_usergroups(client, who, fam, act,
                                                                       core.settings))
            reply = outcome.reply
        except Exception as exc:  # answer, never crash
            reply = failure_reply(exc, "button")
        _tell(client, channel, user, reply)


def _tell(client: WebClient, channel: str | None, user: str, reply: Reply) -> None:
    if channel:
        client.chat_postEphemeral(channel=channel, user=user, text=fallback_text(reply))
