"""The Bolt app: Socket Mode (`tunebot bot --socket`) or HTTP at /slack/events (uvicorn)."""

from __future__ import annotations

import logging

import anyio
from slack_bolt import App as BoltApp
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot import listeners
from bot.notifier import make_client
from bot.oauth import oauth_routes, oauth_settings, register_revocation
from tunebot.logs import install_log_filter
from tunebot.service import App
from tunebot.settings import Settings

log = logging.getLogger(__name__)
DISPATCH_THREADS = 4


def build_bolt(settings: Settings, core: App) -> BoltApp:
    """The Bolt app with every listener registered.

    One workspace: SLACK_BOT_TOKEN. Many: SLACK_CLIENT_ID/SECRET turn on the OAuth install,
    each request then authorized with its workspace's (decrypted) stored token.
    """
    oauth = oauth_settings(settings, core.engine)
    if oauth is None and settings.slack_bot_token is None:
        raise SystemExit("tunebot: bad setting SLACK_BOT_TOKEN: required to run the bot "
                         "(or SLACK_CLIENT_ID/SLACK_CLIENT_SECRET for multi-workspace install)")
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret \
        else None
    # Listeners run inline, before the response: each is short (SQL, a Web API call), and
    # slow work (file downloads) hands itself to a pool. Together with the bounded dispatch
    # below this keeps acks in arrival order under load instead of overtaking each other.
    app = BoltApp(client=make_client(settings), signing_secret=secret, oauth_settings=oauth,
                  process_before_response=True, token_verification_enabled=False,
                  request_verification_enabled=secret is not None,
                  ignoring_self_events_enabled=True)
    register_revocation(app)
    listeners.register(app, core)
    return app


def http_app(bolt: BoltApp) -> Starlette:
    """Starlette app serving /slack/events; Bolt's sync dispatch runs on a few threads so one
    slow request never blocks the event loop (Bolt's own adapter calls it inline), and a burst
    queues in order rather than forty threads contending for the GIL and the database."""

    limiter = anyio.CapacityLimiter(DISPATCH_THREADS)
    verifying = bool(getattr(bolt, "_signing_secret", None))

    async def events(request: Request) -> Response:
        stamp = request.headers.get("x-slack-request-timestamp", "")
        if verifying and not stamp.isdigit():
            # Bolt's verifier would raise on int("soon"): a bad stamp is a bad signature.
            return PlainTextResponse("invalid request", status_code=401)
        body = await request.body()
        bolt_req = to_bolt_request(request, body)
        bolt_resp = await anyio.to_thread.run_sync(bolt.dispatch, bolt_req, limiter=limiter)
        return to_starlette_response(bolt_resp)

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"]), *oauth_routes(bolt)])


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
        if bolt.oauth_flow is not None:
            # Events arrive over the socket; the install pages still need HTTP.
            import threading

            import uvicorn

            server = uvicorn.Server(uvicorn.Config(http_app(bolt), host="0.0.0.0", port=port,
                                                   log_level="warning", access_log=False))
            threading.Thread(target=server.run, name="oauth-http", daemon=True).start()
        SocketModeHandler(bolt, settings.slack_app_token.get_secret_value()).start()
        return
    if settings.slack_signing_secret is None:
        raise SystemExit("tunebot: bad setting SLACK_SIGNING_SECRET: HTTP mode verifies every "
                         "request with it")
    import uvicorn

    uvicorn.run(http_app(bolt), host="0.0.0.0", port=port, log_level="warning",
                access_log=False)
