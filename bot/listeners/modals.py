"""`/prompt new` and `/prompt edit NAME` open the prompt form; its submission saves a version."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack
from slack_bolt import App as BoltApp
from slack_sdk import WebClient
from sqlalchemy.exc import IntegrityError

from bot.blocks import escape
from bot.modals import CALLBACK, STORED, loading_view, message_view, prompt_form, submission
from tunebot import catalog
from tunebot.catalog import forms
from tunebot.commands import Command
from tunebot.core import Core
from tunebot.db import session_scope
from tunebot.errors import UserError

log = logging.getLogger(__name__)


def open_prompt_form(client: WebClient, core: Core, cmd: Command, command: dict[str, Any]) -> None:
    """Open a loading modal inside the trigger's 3 seconds, then replace it with the form."""
    mode = cmd.action
    name = cmd.args.get("name") if mode == "edit" else None
    opened = client.views_open(trigger_id=command["trigger_id"],
                               view=loading_view("New prompt" if mode == "new" else "Edit prompt"))
    view = opened["view"]
    try:
        content = None
        if name is not None:
            with session_scope(core.engine) as session:
                prompt = catalog.get_prompt(session=session, team_id=command["team_id"],
                                            name=name)
                latest = catalog.latest_version(session=session, prompt=prompt)
                content = dict(latest.content) if latest is not None else None
        def stash(meta: dict[str, Any]) -> str:
            return forms.put_form_state(engine=core.engine, team_id=command["team_id"],
                                        user_id=command["user_id"], data=meta)

        form = prompt_form(mode=mode, name=name, content=content,
                           channel=command.get("channel_id"), stash=stash)
    except UserError as exc:
        form = message_view("Edit prompt", escape(str(exc)))
    except Exception as exc:  # the database is away: say so rather than load forever
        log.warning("could not build the prompt form: %s: %s", exc.__class__.__name__,
                    str(exc)[:200])
        form = message_view("Prompt form", "tunebot could not open the form just now (its "
                            "database is not answering); please try again in a minute.")
    client.views_update(view_id=view["id"], hash=view.get("hash"), view=form)


def register(app: BoltApp, core: Core) -> None:
    """Register the form's submission handler."""

    @app.view(CALLBACK)
    def on_submit(ack: Ack, body: dict[str, Any], view: dict[str, Any],
                  client: WebClient) -> None:
        """Validate; errors go back into the form, a saved version is announced."""
        team = (body.get("team") or {}).get("id") or view.get("team_id", "")
        user = body["user"]["id"]

        def load(key: str) -> dict[str, Any] | None:
            return forms.get_form_state(engine=core.engine, key=key, team_id=team,
                                        user_id=user)

        meta, content, errors = submission(view, load)
        if errors:
            ack(response_action="errors", errors=errors)
            return
        try:
            with session_scope(core.engine) as session:
                version, created = catalog.save_version(
                    session=session, team_id=team, name=meta["name"], content=content,
                    author=user, message=meta.get("message", ""), mode=meta["mode"])
                number = version.version
        except UserError as exc:
            ack(response_action="errors",
                errors={"name" if meta["mode"] == "new" else "message": str(exc)[:150]})
            return
        except IntegrityError:
            ack(response_action="errors", errors={
                "name" if meta["mode"] == "new" else "message":
                    "someone saved this prompt at the same moment; submit again"})
            return
        ack()
        if meta.get(STORED):  # saved: the form's kept state is done with (else it expires)
            try:
                forms.drop_form_state(engine=core.engine, key=str(meta[STORED]))
            except Exception as exc:
                log.info("form state %s stays until it expires: %s", meta[STORED], exc)
        name = meta["name"]
        text = (f"<@{user}> saved *{escape(name)}@{number}*"
                + (f" — {escape(meta['message'])}" if meta.get("message") else "")
                + (f"\n`/prompt show {name}@{number}` · `/prompt test {name}@{number} on DATASET`"
                   if created else f"\n(no change: identical to {escape(name)}@{number})"))
        channel = meta.get("channel") or user
        try:
            client.chat_postMessage(channel=channel, text=text, unfurl_links=False)
        except Exception as exc:  # saved either way; the announcement is best effort
            log.warning("could not announce %s@%s: %s", name, number, exc)
