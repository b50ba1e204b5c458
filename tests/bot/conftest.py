"""A running tunebot against the local Slack API: HTTP bot (uvicorn) and a real worker."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from bot.app import build_bolt, http_app
from devtools.slack_api.payloads import (
    event_body,
    event_envelope,
    signed_headers,
    slash_command_body,
    slash_command_fields,
    socket_envelope,
)
from devtools.slack_api.server import SlackAPIServer
from tests.conftest import make_settings
from tunebot import migrate
from tunebot.core import Core, build_core
from tunebot.settings import Settings

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A Starlette app served by uvicorn in a thread, as `tunebot bot --http` serves it."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class BotServer(Served):
    """The HTTP bot; `url` is its /slack/events."""

    def __init__(self, settings: Settings, core: Core) -> None:
        super().__init__(http_app(build_bolt(settings, core)))
        self.url = f"{self.base_url}/slack/events"


@dataclass
class Stack:
    """Everything a Slack end-to-end test talks to."""

    slack: SlackAPIServer
    settings: Settings
    core: Core
    bot: BotServer

    def post(self, body: bytes, *, secret: str = SECRET, **kw: object) -> httpx.Response:
        """POST a signed request to the bot, as Slack would."""
        headers = signed_headers(body, secret, **kw)  # type: ignore[arg-type]
        return httpx.post(self.bot.url, content=body, headers=headers, timeout=10)

    def slash(self, text: str, command: str = "/tunebot", **kw: str) -> httpx.Response:
        """Send a slash command."""
        return self.post(slash_command_body(text, command=command, **kw))


@contextmanager
def running_stack(tmp_path: Path, start_worker, redis_url: str, *, queues: str = "inference,gpu,io",
                  **over: object) -> Iterator[Stack]:
    """Local Slack API + migrated database + real worker (none when start_worker is None) +
    the HTTP bot, with settings `over`."""
    with SlackAPIServer(bot_token=BOT_TOKEN, app_token="xapp-test",
                        signing_secret=SECRET) as slack:
        base: dict[str, object] = {
            "broker_url": redis_url, "slack_api_url": slack.api_url,
            "slack_bot_token": BOT_TOKEN, "slack_signing_secret": SECRET,
            "slack_posts_per_second": 20.0, "admins": ["U0ADMIN"]}
        base.update(over)
        settings = make_settings(tmp_path, **base)
        migrate.upgrade(settings.database_url)
        if start_worker is not None:
            start_worker(settings, queues)
        core = build_core(settings)
        bot = BotServer(settings, core)
        try:
            yield Stack(slack, settings, core, bot)
        finally:
            bot.stop()
            core.engine.dispose()


@pytest.fixture
def stack(tmp_path: Path, start_worker, redis_url: str) -> Iterator[Stack]:
    """The default stack: one worker on every queue, notifier included."""
    with running_stack(tmp_path, start_worker, redis_url) as s:
        yield s


class SocketClient:
    """The same bot over Socket Mode: envelopes in through the local server, acks read back."""

    def __init__(self, stack: Stack) -> None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        self.stack = stack
        self.handler = SocketModeHandler(build_bolt(stack.settings, stack.core), "xapp-test")
        self.thread = threading.Thread(target=self.handler.connect, daemon=True)
        self.thread.start()
        stack.slack.wait_socket_connected(timeout=15)

    def slash(self, text: str, command: str = "/tunebot", **kw: str) -> dict:
        """Send a slash command envelope; the ack's payload is the answer."""
        env_id = self.stack.slack.socket_send(
            socket_envelope(slash_command_fields(text, command=command, **kw), "slash_commands"))
        ack = self.stack.slack.wait_socket_ack(env_id, timeout=20)
        return ack.payload or {}

    def interactive(self, payload: dict) -> dict:
        """Send an interactive (block_actions / view_submission) envelope."""
        env_id = self.stack.slack.socket_send(socket_envelope(payload, "interactive"))
        ack = self.stack.slack.wait_socket_ack(env_id, timeout=20)
        return ack.payload or {}

    def event(self, event: dict, *, event_id: str | None = None, retry_attempt: int = 0) -> None:
        """Send an events_api envelope and wait for its ack."""
        env = socket_envelope(event_envelope(event, event_id=event_id),
                              retry_attempt=retry_attempt,
                              retry_reason="timeout" if retry_attempt else "")
        self.stack.slack.wait_socket_ack(self.stack.slack.socket_send(env), timeout=20)

    def close(self) -> None:
        """Disconnect."""
        self.handler.close()


class HTTPClient:
    """The bot over HTTP: signed requests to /slack/events, the response body is the answer."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def slash(self, text: str, command: str = "/tunebot", **kw: str) -> dict:
        """POST a signed slash command; the JSON ack is the answer."""
        resp = self.stack.slash(text, command=command, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.content else {}

    def interactive(self, payload: dict) -> dict:
        """POST a signed interactive payload."""
        body = urlencode({"payload": json.dumps(payload)}).encode()
        resp = self.stack.post(body)
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.content and resp.headers.get(
            "content-type", "").startswith("application/json") else {}

    def event(self, event: dict, *, event_id: str | None = None, retry_attempt: int = 0) -> None:
        """POST a signed Events API callback."""
        body = event_body(event, event_id=event_id)
        resp = self.stack.post(body, retry_num=retry_attempt) if retry_attempt else \
            self.stack.post(body)
        assert resp.status_code == 200, resp.text

    def close(self) -> None:
        """Nothing to close."""


Client = HTTPClient | SocketClient


@contextmanager
def client_for(stack: Stack, transport: str) -> Iterator[Client]:
    """An HTTP or Socket Mode client of the running bot."""
    client: Client = HTTPClient(stack) if transport == "http" else SocketClient(stack)
    try:
        yield client
    finally:
        client.close()
