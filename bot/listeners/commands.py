"""Slash commands: /prompt /dataset /finetune /model /compare /watch /tunebot — answered in
the ack."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, BoltContext
from slack_bolt import App as BoltApp
from slack_sdk import WebClient

from bot.blocks import escape, fallback_text, reply_blocks
from bot.listeners.common import UNAVAILABLE, actor_for, job_reply, run
from bot.listeners.modals import open_prompt_form
from tunebot.commands import parse
from tunebot.core import Core
from tunebot.datasets.uploads import PENDING_MINUTES, expect_upload
from tunebot.errors import UserError
from tunebot.replies import error

# The HTTP front door parses a slash command once to route it (bot.app.route) and leaves the
# result in the request's context under this key; Socket Mode requests are parsed here.
PARSED = "tunebot_command"
# What the listener's answer was, for the ack metric (bot.app.MeteredBolt): ok, error (a
# usage or user error) or unavailable (the database or broker is away).
OUTCOME = "tunebot_outcome"
COMMANDS = re.compile(r"^/(prompt|dataset|finetune|model|compare|watch|tunebot)$")


def register(app: BoltApp, core: Core) -> None:
    """Register the slash-command listener."""

    @app.command(COMMANDS)
    def on_command(ack: Ack, command: dict[str, Any], client: WebClient,
                   context: BoltContext) -> None:
        """Parse (unless routing did), run (SQL only, fast), and answer in the ack itself."""
        family = command["command"].lstrip("/")
        try:
            cmd = context.get(PARSED) or parse(command.get("text", ""), family=family)
        except UserError as exc:
            reply = error(str(exc), exc.usage)
        else:
            if cmd.spec.form and command.get("trigger_id"):
                ack()  # the form opens within the trigger's 3 seconds
                open_prompt_form(client, core, cmd, command)
                return
            if (cmd.family, cmd.action) == ("dataset", "add"):
                column = cmd.params.get("expected")
                try:
                    expect_upload(engine=core.engine, team_id=command["team_id"],
                                  user_id=command["user_id"],
                                  channel=command.get("channel_id", ""), name=cmd.args["name"],
                                  expected_column=column)
                except UserError as exc:  # a bad expected=COLUMN: said now, not on upload
                    reply = error(str(exc), exc.usage)
                    context[OUTCOME] = "error"
                    ack(text=fallback_text(reply), blocks=reply_blocks(reply),
                        response_type="ephemeral")
                    return
                except Exception:  # the database is away: say so, never crash
                    context[OUTCOME] = "unavailable"
                    ack(text=UNAVAILABLE, response_type="ephemeral")
                    return
                mapped = f", with the expected answers in column `{column}`" if column else ""
                text = (f"Upload the file for dataset {cmd.args['name']} here within "
                        f"{PENDING_MINUTES} minutes (JSONL, CSV, YAML, Parquet or Arrow rows, "
                        f"or training data{mapped}); I'll check it and answer in its thread.")
                ack(text=escape(text), response_type="ephemeral")
                return
            # Slack never retries slash commands, but a client or proxy may resend the body:
            # the trigger_id is unique per invocation, so it keys the job.
            key = f"slash:{command['team_id']}:{command.get('trigger_id', '')}" \
                if cmd.spec.job and command.get("trigger_id") else None
            actor = actor_for(core, team_id=command["team_id"], user_id=command["user_id"],
                              channel=command.get("channel_id"), thread_ts=None,
                              response_url=command.get("response_url"), key=key)
            outcome = run(cmd, actor, core, client)
            reply = job_reply(outcome) if outcome.job is not None else outcome.reply
        context[OUTCOME] = ("unavailable" if reply.text == UNAVAILABLE else
                            "error" if reply.error else "ok")
        ack(text=fallback_text(reply), blocks=reply_blocks(reply),
            response_type="ephemeral" if reply.ephemeral else "in_channel")
