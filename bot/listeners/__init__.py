"""One register(app, core) per kind of listener."""

from __future__ import annotations

from slack_bolt import App as BoltApp

from bot.listeners import actions, commands, files, home, mentions, modals
from tunebot.core import Core


def register(app: BoltApp, core: Core) -> None:
    """Register every listener."""
    commands.register(app, core)
    mentions.register(app, core)
    actions.register(app, core)
    home.register(app, core)
    modals.register(app, core)
    files.register(app, core)
