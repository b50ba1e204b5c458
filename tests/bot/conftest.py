"""A running tunebot against the local Slack API: HTTP bot (uvicorn) and a real worker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from bot.app import build_bolt, http_app
from tests.conftest import make_settings
from tests.slack_api.payloads import signed_headers, slash_command_body
from tests.slack_api.server import SlackAPIServer
from tunebot import migrate
from tunebot.cli import app_for
from tunebot.service import App
from tunebot.settings import Settings

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BotServer:
    """The HTTP bot served by uvicorn in a thread, as `tunebot bot --http` serves it."""

    def __init__(self, settings: Settings, core: App) -> None:
        self.port = free_port()
        config = uvicorn.Config(http_app(build_bolt(settings, core)), host="127.0.0.1",
                                port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "bot did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/slack/events"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Stack:
    """Everything a Slack end-to-end test talks to."""

    slack: SlackAPIServer
    settings: Settings
    core: App
    bot: BotServer

    def post(self, body: bytes, *, secret: str = SECRET, **kw: object) -> httpx.Response:
        """POST a signed request to the bot, as Slack would."""
        headers = signed_headers(body, secret, **kw)  # type: ignore[arg-type]
        return httpx.post(self.bot.url, content=body, headers=headers, timeout=10)

    def slash(self, text: str, command: str = "/tunebot", **kw: str) -> httpx.Response:
        """Send a slash command."""
        return self.post(slash_command_body(text, command=command, **kw))


@pytest.fixture
def stack(tmp_path: Path, start_worker, redis_url: str) -> Iterator[Stack]:
    """Local Slack API + migrated database + real worker (all queues, notifier included)."""
    with SlackAPIServer(bot_token=BOT_TOKEN, app_token="xapp-test",
                        signing_secret=SECRET) as slack:
        settings = make_settings(tmp_path, broker_url=redis_url, slack_api_url=slack.api_url,
                                 slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET,
                                 slack_posts_per_second=20.0, admins=["U0ADMIN"])
        migrate.upgrade(settings.database_url)
        start_worker(settings)
        core = app_for(settings)
        bot = BotServer(settings, core)
        try:
            yield Stack(slack, settings, core, bot)
        finally:
            bot.stop()
