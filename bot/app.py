"""The Bolt app: Socket Mode (`tunebot bot --socket`) or HTTP at /slack/events (uvicorn)."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import uvicorn
from slack_bolt import App as BoltApp
from slack_bolt import BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot import listeners
from bot.listeners.commands import OUTCOME, PARSED
from bot.notifier import MeteredWebClient, make_client
from bot.oauth import oauth_routes, oauth_settings, register_revocation
from tunebot import telemetry
from tunebot.commands import FAMILIES, Command, parse
from tunebot.core import Core, build_core
from tunebot.errors import UserError
from tunebot.logs import install_log_filter
from tunebot.settings import Settings

log = logging.getLogger(__name__)
RECEIVED = "tunebot_received"  # when the HTTP front door got the request (perf_counter)
# Slash commands are answered one at a time, in arrival order: each is a few milliseconds of
# SQL and a broker send, and measured under load (bench/bench_ack.py) a single lane answers
# faster than several threads contending for one GIL, whose slowest acks then took seconds.
# Everything else (events, buttons, forms, the commands that open a form, which wait on Slack's
# views.open, and those whose policy may look up usergroups) has its own small pool, so a slow
# Web API call never holds the commands.
COMMAND_THREADS = 1
OTHER_THREADS = 4
# Commands that run a user's template: each render is bounded (tunebot/catalog/templates.py:
# two seconds at most), which is still far too long to hold every workspace's slash commands.
USER_CODE = frozenset({("prompt", "render")})
# The body limit of each Bolt app built here (build_bolt records its settings' value).
_BODY_LIMITS: weakref.WeakKeyDictionary[BoltApp, int] = weakref.WeakKeyDictionary()


def build_bolt(settings: Settings, core: Core) -> BoltApp:
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
    app = MeteredBolt(client=make_client(settings), signing_secret=secret, oauth_settings=oauth,
                  process_before_response=True, token_verification_enabled=False,
                  request_verification_enabled=secret is not None,
                  ignoring_self_events_enabled=True)
    register_revocation(app)
    app.use(_metered_client)
    listeners.register(app, core)
    _BODY_LIMITS[app] = settings.max_body_bytes
    return app


class MeteredBolt(BoltApp):
    """The Bolt app, counting each answer by family and outcome and timing it from the
    request's arrival (tunebot_bot_acks_total, tunebot_bot_ack_seconds): HTTP and Socket
    Mode both answer through dispatch, after the listener has acked."""

    def dispatch(self, req: BoltRequest) -> BoltResponse:
        """Bolt's dispatch, measured."""
        started = req.context.get(RECEIVED) or time.perf_counter()
        family = ack_family(req.body)
        outcome = "failed"
        try:
            resp = super().dispatch(req)
            outcome = req.context.get(OUTCOME) or STATUS_OUTCOMES.get(
                resp.status, "ok" if resp.status < 400 else "failed")
            return resp
        finally:
            telemetry.ACKS.labels(family, outcome).inc()
            telemetry.ACK_SECONDS.labels(family).observe(time.perf_counter() - started)


STATUS_OUTCOMES = {401: "unauthorized", 403: "unauthorized", 404: "unhandled"}
PAYLOAD_FAMILIES = {"event_callback": "event", "block_actions": "action",
                    "view_submission": "view", "view_closed": "view"}


def ack_family(body: dict[str, Any]) -> str:
    """The metric's family of a request: a slash command's family, else event, action, view
    or other (a bounded set)."""
    command = str(body.get("command") or "").lstrip("/")
    if command:
        return telemetry.bounded(command, FAMILIES)
    return PAYLOAD_FAMILIES.get(str(body.get("type") or ""), "other")


def _metered_client(context: BoltContext, next: Callable[[], None]) -> None:
    """Bolt builds a plain WebClient per request: the listeners get a metered one."""
    if context.client is not None:
        context["client"] = MeteredWebClient.like(context.client)
    next()


def route(body: bytes, content_type: str = "application/x-www-form-urlencoded"
          ) -> tuple[str, Command | None]:
    """Which lane a request takes, and the slash command it carries, parsed once.

    "commands" for a slash command answered from SQL alone, "other" for everything else: a
    command that opens a form (it waits on views.open), may look up usergroups (fine-tune
    policy) or renders a user's template never holds the ordered lane. The parsed command
    travels to the listener in the request's context, so the text is parsed once. Anything
    unreadable goes to "other", where Bolt verifies and answers it.
    """
    if not content_type.startswith("application/x-www-form-urlencoded") \
            or body.startswith(b"payload="):
        return "other", None
    try:
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=50)
        family = (form.get("command") or [""])[0].lstrip("/")
        if family not in FAMILIES:
            return "other", None
        cmd = parse((form.get("text") or [""])[0], family=family)
    except (ValueError, UserError):  # too many fields, or a usage error (answered at once)
        return "other", None
    except Exception:  # routing must never fail a request: Bolt answers whatever this is
        log.exception("could not route a request; it takes the general pool")
        return "other", None
    if cmd.spec.form or cmd.spec.policy == "finetune" or (cmd.family, cmd.action) in USER_CODE:
        return "other", cmd
    return "commands", cmd


def lane(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> str:
    """The lane alone (see route)."""
    return route(body, content_type)[0]


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be over `limit` bytes: a declared
    Content-Length is refused before anything is read, a streamed body once its running total
    passes the limit (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def http_app(bolt: BoltApp, *, max_body_bytes: int | None = None,
             with_metrics: bool = True) -> Starlette:
    """Starlette app serving /slack/events; Bolt's sync dispatch runs off the event loop (Bolt's
    own adapter calls it inline, so one slow request would block every other), slash commands
    in one ordered lane and the rest in a small pool (see COMMAND_THREADS). Bodies over
    `max_body_bytes` (default: the setting TUNEBOT_MAX_BODY_BYTES the app was built with) are
    answered 413 before their signature is checked, without being read whole. /metrics
    serves this process's Prometheus metrics unless `with_metrics` is off."""

    limiters = {"commands": anyio.CapacityLimiter(COMMAND_THREADS),
                "other": anyio.CapacityLimiter(OTHER_THREADS)}
    verifying = bool(getattr(bolt, "_signing_secret", None))
    limit = max_body_bytes or _BODY_LIMITS.get(bolt) or \
        Settings.model_fields["max_body_bytes"].default

    async def events(request: Request) -> Response:
        received = time.perf_counter()
        stamp = request.headers.get("x-slack-request-timestamp", "")
        if verifying and not stamp.isdigit():
            # Bolt's verifier would raise on int("soon"): a bad stamp is a bad signature.
            return PlainTextResponse("invalid request", status_code=401)
        body = await read_body(request, limit)
        if body is None:
            # Slack never sends this much: refuse before reading (or verifying) the rest, and
            # close the connection rather than drain what is left of it.
            return PlainTextResponse(f"request body over {limit:,} bytes", status_code=413,
                                     headers={"Connection": "close"})
        try:
            bolt_req = to_bolt_request(request, body)
        except ValueError:  # not UTF-8, or a JSON body that does not parse: no Slack request
            return PlainTextResponse("invalid request", status_code=400)
        which, cmd = route(body, request.headers.get("content-type", ""))
        if cmd is not None:
            bolt_req.context[PARSED] = cmd
        bolt_req.context[RECEIVED] = received  # the ack's time includes the wait for a lane
        bolt_resp = await anyio.to_thread.run_sync(bolt.dispatch, bolt_req,
                                                   limiter=limiters[which])
        return to_starlette_response(bolt_resp)

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics(_: Request) -> Response:
        return Response(telemetry.exposition(), media_type=telemetry.CONTENT_TYPE)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"]),
                             Route("/healthz", health, methods=["GET"]),
                             *([Route("/metrics", metrics, methods=["GET"])] if with_metrics
                               else []),
                             *oauth_routes(bolt)])


def main(settings: Settings, *, mode: str, port: int = 3000) -> None:
    """Run the bot until interrupted."""
    install_log_filter(settings)
    core = build_core(settings)
    bolt = build_bolt(settings, core)
    if mode == "socket":
        if settings.slack_app_token is None:
            raise SystemExit("tunebot: bad setting SLACK_APP_TOKEN: Socket Mode needs an "
                             "app-level token (xapp-…)")
        telemetry.serve_process(settings)  # no HTTP port of its own to carry /metrics
        if bolt.oauth_flow is not None:
            # Events arrive over the socket; the install pages still need HTTP.
            server = uvicorn.Server(uvicorn.Config(http_app(bolt, with_metrics=False),
                                                   host="0.0.0.0", port=port,
                                                   log_level="warning", access_log=False))
            threading.Thread(target=server.run, name="oauth-http", daemon=True).start()
        SocketModeHandler(bolt, settings.slack_app_token.get_secret_value()).start()
        return
    if settings.slack_signing_secret is None:
        raise SystemExit("tunebot: bad setting SLACK_SIGNING_SECRET: HTTP mode verifies every "
                         "request with it")
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise walk it again and again under load (a pause in the acks).
    gc.collect()
    gc.freeze()
    uvicorn.run(http_app(bolt, with_metrics=settings.metrics_port != 0), host="0.0.0.0",
                port=port, log_level="warning",
                access_log=False)
