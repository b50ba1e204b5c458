"""SlackAPIServer: the fake workspace served over HTTP and WebSocket from a background thread."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiohttp import BodyPartReader, WSMsgType, web

from . import bodies, payloads
from .records import Response, SocketAck
from .workspace import Workspace

T = TypeVar("T")
LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>Fake Co | Slack</title></head>"
    "<body><h1>Sign in to Fake Co</h1></body></html>"
)


class SlackAPIServer(Workspace):
    """A local Slack Web API + Socket Mode endpoint that records what the app did.

    Use as a context manager; `api_url` is the base_url for slack_sdk's WebClient.
    """

    def __init__(
        self,
        bot_token: str = "xoxb-test",
        app_token: str = "xapp-test",
        signing_secret: str = "s3cret",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            bot_token=bot_token, app_token=app_token, signing_secret=signing_secret, **kwargs
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._response_urls: set[str] = set()
        self.port = 0
        self.socket_ping_interval = 0.1

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> SlackAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SlackAPIServer:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/"
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.SockSite(self._runner, sock).start())
            except BaseException as exc:  # surfaced to start()'s caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="slack-api-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close sockets, stop serving and join the thread."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            for ws in list(self._sockets):
                await ws.close(code=1001, message=b"server stopping")
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self._thread = None

    @property
    def api_url(self) -> str:
        """Base URL for WebClient(base_url=...), ending in /api/."""
        return f"{self.base_url}api/"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{ticket}", self._upload)
        app.router.add_get("/files-pri/{team_file}/download/{name}", self._download)
        app.router.add_get("/files-pri/{team_file}/{name}", self._download)
        app.router.add_get("/signin", self._signin)
        app.router.add_post("/response/{kind}/{key}", self._response)
        app.router.add_get("/link/", self._link)
        app.router.add_get("/link", self._link)
        return app

    # ---- HTTP handlers -------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        args: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    args.update(body)
            else:
                form = await request.post()
                for key in form:
                    value = form.getone(key)
                    args[key] = value.file.read() if isinstance(value, web.FileField) else value
        token = args.get("token")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ").strip()
        elif auth.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                client_id, secret = "", ""
            args.setdefault("client_id", client_id)
            args.setdefault("client_secret", secret)
        status, body, headers = self.dispatch(request.match_info["method"], args, token)
        return web.json_response(body, status=status, headers=headers)

    async def _upload(self, request: web.Request) -> web.Response:
        failure = self.take_failure("upload_url")
        if failure is not None:
            return web.Response(status=failure.status, text=failure.error)
        if request.content_type.startswith("multipart/"):
            content = b""
            reader = await request.multipart()
            async for item in reader:
                # cast: the reader yields body parts here (a nested multipart is never sent), and
                # aiohttp types the items as MultipartReader | BodyPartReader | None.
                part = cast(BodyPartReader, item)
                if part.filename is not None or part.name in ("file", "content"):
                    content = await part.read()
                    break
        else:
            content = await request.read()
        if not self.receive_upload(request.match_info["ticket"], content):
            return web.Response(status=404, text="upload ticket not found")
        return web.Response(text=f"OK - {len(content)}", content_type="text/plain")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["team_file"].partition("-")[2]
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        served = self.serve_download(file_id, token, request.host)
        if served is None:
            # Like Slack: no valid token means a redirect to the sign-in page, not an error code.
            raise web.HTTPFound(f"/signin?redir={request.path}")
        content, mimetype = served
        return web.Response(body=content, content_type=mimetype)

    async def _signin(self, request: web.Request) -> web.Response:
        return web.Response(text=LOGIN_PAGE, content_type="text/html")

    async def _response(self, request: web.Request) -> web.Response:
        url = f"{self.base_url}response/{request.match_info['kind']}/{request.match_info['key']}"
        if url not in self._response_urls:
            return web.Response(status=404, text="no_service")
        failure = self.take_failure("response_url")
        if failure is not None:
            return web.Response(status=failure.status, text=failure.error)
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            form = await request.post()
            body = json.loads(str(form.get("payload", "{}")))
        with self._lock:
            self.responses.append(Response(url, body, time.time()))
        return web.Response(text="ok", content_type="text/plain")

    async def _link(self, request: web.Request) -> web.StreamResponse:
        if not self.ticket_valid(request.query.get("ticket", "")):
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            self._sockets.append(ws)
            count = len(self._sockets)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": count,
                    "debug_info": {
                        "host": "applink-fake-1",
                        "build_number": 10,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.identity.app_id},
                }
            )
        )
        pinger = asyncio.ensure_future(self._ping(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._record_frame(msg.data)
        finally:
            pinger.cancel()
            with self._lock:
                if ws in self._sockets:
                    self._sockets.remove(ws)
        return ws

    async def _ping(self, ws: web.WebSocketResponse) -> None:
        # Frequent pings keep slack_sdk's builtin client from sitting in a blocking recv():
        # its close() waits for that recv, so without them every close costs ~3 s.
        while not ws.closed:
            await asyncio.sleep(self.socket_ping_interval)
            try:
                await ws.ping()
            except (ConnectionError, RuntimeError):
                return

    def _record_frame(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            return
        if isinstance(frame, dict):
            ack = SocketAck(frame.get("envelope_id"), frame.get("payload"), frame, time.time())
            with self._lock:
                self.socket_acks.append(ack)

    # ---- test helpers --------------------------------------------------------------------

    def response_url(self, kind: str = "commands") -> str:
        """A fresh response_url on this server; what is POSTed to it lands in `responses`."""
        url = f"{self.base_url}response/{kind}/{self.next_id('R')}"
        with self._lock:
            self._response_urls.add(url)
        return url

    def responses_for(self, url: str) -> list[dict[str, Any]]:
        """Bodies POSTed to one response_url, in order."""
        with self._lock:
            return [copy.deepcopy(r.body) for r in self.responses if r.url == url]

    def add_file(
        self,
        name: str,
        content: bytes,
        host_ok: bool = True,
        *,
        title: str | None = None,
        user: str = "U0ALICE",
        channel: str | None = None,
        thread_ts: str | None = None,
        stub: bool = False,
    ) -> dict[str, Any]:
        """Store a file a user shared; returns its Slack file object for an event payload.

        Its url_private(_download) point at this server and need the bot token. With
        host_ok=False they name `localhost` instead of 127.0.0.1: a host the app should not
        trust with its token. stub=True returns the `check_file_info` stub instead.
        """
        base = self.base_url if host_ok else self.base_url.replace("127.0.0.1", "localhost")
        who = self.identity
        file_id = self.next_id("F")
        obj = bodies.file_object(
            file_id=file_id,
            name=name,
            title=title or name,
            content=content,
            user=user,
            team_id=who.team_id,
            files_base=base,
        )
        obj["is_public"] = True
        with self._lock:
            if channel:
                channel = self.resolve_channel(channel)
                bodies.share_file(
                    obj,
                    channel=channel,
                    ts=self.next_ts(),
                    thread_ts=thread_ts,
                    user=user,
                    channel_name=self.channels[channel]["name"],
                    team_id=who.team_id,
                )
            self.store_file(obj, content)
        if stub:
            return {
                "id": file_id,
                "mode": "file_access",
                "file_access": "check_file_info",
                "created": 0,
                "timestamp": 0,
                "user": "",
            }
        return copy.deepcopy(obj)

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02
    ) -> T:
        """Poll `predicate` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            time.sleep(interval)

    def sign(self, body: bytes | str, timestamp: int | str | None = None) -> dict[str, str]:
        """Signature, timestamp and content-type headers for `body` under the signing secret."""
        return payloads.signed_headers(body, self.signing_secret, timestamp)

    # ---- Socket Mode ---------------------------------------------------------------------

    @property
    def socket_connections(self) -> int:
        """How many Socket Mode clients are connected now."""
        with self._lock:
            return len(self._sockets)

    def wait_socket_connected(self, timeout: float = 10.0) -> None:
        """Block until a Socket Mode client has connected (and been sent hello)."""
        self.wait_for(lambda: self.socket_connections > 0, timeout)

    def _on_loop(self, coro: Any, timeout: float = 5.0) -> Any:
        if self._loop is None:
            raise RuntimeError("server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def socket_send(self, envelope: dict[str, Any]) -> str:
        """Push an envelope to the newest Socket Mode connection; returns its envelope_id."""
        envelope = dict(envelope)
        envelope.setdefault("envelope_id", payloads.socket_envelope({})["envelope_id"])
        with self._lock:
            if not self._sockets:
                raise RuntimeError("no Socket Mode client is connected")
            ws = self._sockets[-1]
        self._on_loop(ws.send_str(json.dumps(envelope)))
        return str(envelope["envelope_id"])

    def socket_ack(self, envelope_id: str) -> SocketAck | None:
        """The first frame the app wrote back for `envelope_id`, if any yet."""
        with self._lock:
            return next((a for a in self.socket_acks if a.envelope_id == envelope_id), None)

    def wait_socket_ack(self, envelope_id: str, timeout: float = 10.0) -> SocketAck:
        """Block until the app acks `envelope_id`, and return the ack."""
        return self.wait_for(lambda: self.socket_ack(envelope_id), timeout)

    def socket_disconnect(self, reason: str | None = "refresh_requested") -> None:
        """Close every Socket Mode connection, first sending Slack's disconnect frame."""
        with self._lock:
            sockets = list(self._sockets)

        async def close_all() -> None:
            for ws in sockets:
                if reason:
                    await ws.send_str(
                        json.dumps(
                            {
                                "type": "disconnect",
                                "reason": reason,
                                "debug_info": {"host": "applink-fake-1"},
                            }
                        )
                    )
                await ws.close()

        self._on_loop(close_all())
