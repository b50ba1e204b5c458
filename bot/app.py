"""The Bolt app: Socket Mode (`tunebot bot --socket`) or HTTP at /slack/events (uvicorn)."""

from __future__ import annotations

import logging

from slack_bolt import App as BoltApp
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot import listeners
from bot.notifier import make_client
from tunebot.service import App
from tunebot.settings import Settings

log = logging.getLogger(__name__)


class TokenFilter(logging.Filter):
    """Masks Slack tokens and the signing secret in every log record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message with secrets replaced."""
        msg = record.getMessage()
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None
        return True


def install_log_filter(settings: Settings) -> None:
    """Never let a token or secret reach the logs."""
    secrets = [s.get_secret_value() for s in (settings.slack_bot_token, settings.slack_app_token,
                                              settings.slack_signing_secret,
                                              settings.slack_client_secret) if s is not None]
    filt = TokenFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(filt)
    logging.getLogger().addFilter(filt)


def build_bolt(settings: Settings, core: App) -> BoltApp:
    """The Bolt app with every listener registered."""
    if settings.slack_bot_token is None:
        raise SystemExit("tunebot: bad setting SLACK_BOT_TOKEN: required to run the bot")
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret \
        else None
    app = BoltApp(client=make_client(settings), signing_secret=secret,
                  token_verification_enabled=False,
                  request_verification_enabled=secret is not None,
                  ignoring_self_events_enabled=True)
    listeners.register(app, core)
    return app


def http_app(bolt: BoltApp) -> Starlette:
    """Starlette app serving /slack/events; Bolt's sync dispatch runs in a thread pool so one
    slow request never blocks the event loop (Bolt's own adapter calls it inline)."""

    async def events(request: Request) -> Response:
        body = await request.body()
        bolt_req = to_bolt_request(request, body)
        bolt_resp = await run_in_threadpool(bolt.dispatch, bolt_req)
        return to_starlette_response(bolt_resp)

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"])])


def main(settings: Settings, *, mode: str, port: int = 3000) -> None:
    """Run the bot until interrupted."""
    from tunebot.cli import app_for

    install_log_filter(settings)
    core = app_for(settings)
    bolt = build_bolt(settings, core)
    if mode == "socket":
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        if settings.slack_app_token is None:
            raise SystemExit("tunebot: bad setting SLACK_APP_TOKEN: Socket Mode needs an "
                             "app-level token (xapp-…)")
        SocketModeHandler(bolt, settings.slack_app_token.get_secret_value()).start()
        return
    if settings.slack_signing_secret is None:
        raise SystemExit("tunebot: bad setting SLACK_SIGNING_SECRET: HTTP mode verifies every "
                         "request with it")
    import uvicorn

    uvicorn.run(http_app(bolt), host="0.0.0.0", port=port, log_level="warning",
                access_log=False)
