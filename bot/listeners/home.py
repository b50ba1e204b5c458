"""App Home: published when a user opens the tab and when they page through the catalog."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack
from slack_bolt import App as BoltApp
from slack_sdk import WebClient

from bot.home import HOME_PAGE, publish_home
from tunebot.core import Core


def register(app: BoltApp, core: Core) -> None:
    """Register the Home tab listeners."""

    @app.event("app_home_opened")
    def on_home(body: dict[str, Any], event: dict[str, Any], client: WebClient) -> None:
        """Refresh the Home tab each time it is opened."""
        if event.get("tab", "home") != "home":
            return
        team = body.get("team_id") or event.get("team", "")
        publish_home(client, core.engine, team, event["user"])

    @app.action(re.compile(f"^{HOME_PAGE}_(prev|next)$"))
    def on_page(ack: Ack, body: dict[str, Any], action: dict[str, Any],
                client: WebClient) -> None:
        """Show another page of the catalog."""
        ack()
        try:
            page = int(action.get("value", "0"))
        except ValueError:
            page = 0
        team = (body.get("team") or {}).get("id") or body["user"].get("team_id", "")
        publish_home(client, core.engine, team, body["user"]["id"], page)
