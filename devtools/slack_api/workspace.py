"""The fake workspace's state and Web API dispatch (no HTTP here); failure injection and the
read side are mixins in failures.py and recorded.py."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from . import bodies
from .failures import Failure, FailureInjection
from .recorded import Recorded
from .records import (
    Call,
    Download,
    Identity,
    PendingUpload,
    Rejected,
    Response,
    SocketAck,
    UploadedFile,
)

NO_AUTH_METHODS = {"oauth.v2.access", "api.test"}
APP_TOKEN_METHODS = {"apps.connections.open"}
JSON_ARGS = ("blocks", "attachments", "view", "files", "metadata")
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


class SlackError(Exception):
    """A method-level failure: answered as HTTP 200 `{"ok": false, "error": ...}`."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


class Workspace(FailureInjection, Recorded):
    """Everything the fake Slack knows; every mutation happens under `self._lock`."""

    def __init__(
        self,
        *,
        bot_token: str,
        app_token: str,
        signing_secret: str,
        client_id: str = "1000000000.1000000001",
        client_secret: str = "fake-client-secret",
        identity: Identity | None = None,
        strict_channels: bool = False,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.client_id = client_id
        self.client_secret = client_secret
        self.identity = identity or Identity()
        self.strict_channels = strict_channels
        self.base_url = "http://127.0.0.1:0/"
        self._lock = threading.RLock()
        self._tokens: dict[str, Identity] = {bot_token: self.identity}
        self._clock_us = 0
        self._serial = 0
        self.calls: list[Call] = []
        self.rejected: list[Rejected] = []
        self.responses: list[Response] = []
        self.socket_acks: list[SocketAck] = []
        self.downloads: list[Download] = []
        self.files: list[UploadedFile] = []
        self.usergroups: dict[str, list[str]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.handlers: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._file_objects: dict[str, dict[str, Any]] = {}
        self._file_content: dict[str, bytes] = {}
        self._pending: dict[str, PendingUpload] = {}
        self._tickets: set[str] = set()
        self._oauth_codes: dict[str, dict[str, Any]] = {}
        self._failures: list[Failure] = []
        self.add_user("U0ALICE", "alice", real_name="Alice Example")
        self.add_user(self.identity.user_id, self.identity.user, is_bot=True)
        self.add_channel("C0CHANNEL", "bot-testing")

    # ---- ids and clock -------------------------------------------------------------------

    def next_ts(self) -> str:
        """A fresh message ts, strictly increasing across the whole workspace."""
        with self._lock:
            self._clock_us = max(int(time.time() * 1_000_000), self._clock_us + 1)
            return f"{self._clock_us // 1_000_000}.{self._clock_us % 1_000_000:06d}"

    def next_id(self, prefix: str) -> str:
        """A fresh Slack-looking id such as F0000000001."""
        with self._lock:
            self._serial += 1
            return f"{prefix}{self._serial:010d}"

    # ---- configuration -------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Register a user for users.info; kwargs go to bodies.user_object."""
        kwargs.setdefault("team_id", self.identity.team_id)
        with self._lock:
            self.users[user_id] = bodies.user_object(user_id, name, **kwargs)
            return self.users[user_id]

    def add_channel(self, channel_id: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Register a channel (is_member=False makes chat.postMessage answer not_in_channel)."""
        kwargs.setdefault("team_id", self.identity.team_id)
        with self._lock:
            self.channels[channel_id] = bodies.channel_object(channel_id, name, **kwargs)
            return self.channels[channel_id]

    def add_oauth_code(
        self,
        code: str,
        *,
        team_id: str = "T0TEAM",
        team: str = "Fake Co",
        user_id: str = "U0ALICE",
        bot_token: str | None = None,
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        scope: str = "app_mentions:read,chat:write,commands,files:read",
        user_token: str | None = None,
        user_scope: str = "",
    ) -> dict[str, Any]:
        """Make `code` redeemable once via oauth.v2.access; returns the body it will answer."""
        who = Identity(
            team_id=team_id,
            team=team,
            team_domain=team.lower().replace(" ", ""),
            user_id=bot_user_id,
            bot_id=bot_id,
            app_id=self.identity.app_id,
        )
        token = bot_token or f"xoxb-{team_id}-{self.next_id('')}"
        body = bodies.oauth_access(
            bot_token=token,
            who=who,
            scope=scope,
            user_id=user_id,
            user_scope=user_scope,
            user_token=user_token,
        )
        with self._lock:
            self._oauth_codes[code] = {"body": body, "identity": who}
        return copy.deepcopy(body)

    def add_bot_token(self, token: str, identity: Identity | None = None) -> None:
        """Accept another bot token (another workspace install)."""
        with self._lock:
            self._tokens[token] = identity or self.identity

    def on(
        self, method: str, handler: Callable[[dict[str, Any], str | None], dict[str, Any]]
    ) -> None:
        """Answer `method` with handler(args, token) -> body; bodies with ok=true are recorded."""
        with self._lock:
            self.handlers[method] = handler

    # ---- Web API dispatch ----------------------------------------------------------------

    def dispatch(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Run one Web API call: returns (HTTP status, JSON body, extra headers)."""
        from .methods import METHODS  # methods imports this module

        args = decode_args(args)
        failure = self.take_failure(method)
        if failure is not None:
            body = {"ok": False, "error": failure.error}
            headers = {"Retry-After": str(failure.retry_after)} if failure.status == 429 else {}
            self._reject(method, args, token, failure.error, failure.status)
            return failure.status, body, headers
        with self._lock:
            try:
                who = self._authenticate(method, token)
                custom = self.handlers.get(method)
                if custom is not None:
                    body, ts = custom(dict(args), token), None
                    if not body.get("ok"):
                        raise SlackError(str(body.get("error", "unknown_error")))
                elif method in METHODS:
                    body, ts = METHODS[method](self, args, who)
                else:
                    raise SlackError("unknown_method")
            except SlackError as exc:
                self._reject(method, args, token, exc.error, 200)
                return 200, {"ok": False, "error": exc.error, **exc.extra}, {}
            self.calls.append(Call(method, args, token, ts, time.time()))
            return 200, body, {}

    def _authenticate(self, method: str, token: str | None) -> Identity:
        if method in NO_AUTH_METHODS:
            return self.identity
        if not token:
            raise SlackError("not_authed")
        if method in APP_TOKEN_METHODS:
            if token == self.app_token:
                return self.identity
            raise SlackError("not_allowed_token_type" if token in self._tokens else "invalid_auth")
        if token in self._tokens:
            return self._tokens[token]
        raise SlackError("not_allowed_token_type" if token == self.app_token else "invalid_auth")

    def _reject(
        self, method: str, args: dict[str, Any], token: str | None, error: str, status: int
    ) -> None:
        with self._lock:
            self.rejected.append(Rejected(method, args, token, error, status, time.time()))

    # ---- state used by methods.py --------------------------------------------------------

    def resolve_channel(self, channel: Any, *, posting: bool = False) -> str:
        """Map a channel argument to a known channel id, or raise channel_not_found."""
        channel = str(channel or "")
        if channel[:1] in ("U", "W") and channel in self.users:
            dm = f"D{channel[1:]}DM"
            if dm not in self.channels:
                self.add_channel(dm, channel.lower())
            return dm
        if channel not in self.channels:
            if self.strict_channels or not CHANNEL_ID.match(channel):
                raise SlackError("channel_not_found")
            self.add_channel(channel, channel.lower())
        if posting and not self.channels[channel]["is_member"]:
            raise SlackError("not_in_channel")
        return channel

    def store_message(self, channel: str, message: dict[str, Any]) -> None:
        """Append a message the bot posted (caller holds the lock)."""
        self._messages.setdefault(channel, []).append(message)

    def find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The stored message with this ts in this channel, or None."""
        for message in self._messages.get(channel, []):
            if message["ts"] == ts:
                return message
        return None

    def store_ephemeral(self, message: dict[str, Any]) -> None:
        """Keep an ephemeral message (caller holds the lock)."""
        self._ephemerals.append(message)

    def issue_ticket(self) -> str:
        """A one-off Socket Mode ticket for the /link/ endpoint."""
        ticket = self.next_id("ticket-")
        self._tickets.add(ticket)
        return ticket

    def ticket_valid(self, ticket: str) -> bool:
        """Whether apps.connections.open issued `ticket` (clients may reuse it to reconnect)."""
        with self._lock:
            return ticket in self._tickets

    def redeem_oauth_code(self, code: str) -> dict[str, Any] | None:
        """The install behind `code`, once (the token is accepted from then on)."""
        entry = self._oauth_codes.pop(code, None)
        if entry is None:
            return None
        self._tokens[entry["body"]["access_token"]] = entry["identity"]
        return copy.deepcopy(entry["body"])

    # ---- files ---------------------------------------------------------------------------

    def begin_upload(
        self, *, filename: str, length: int, token: str, extra: dict[str, Any]
    ) -> PendingUpload:
        """Issue a file id and upload ticket."""
        pending = PendingUpload(
            self.next_id("F"), filename, length, self.next_id("up"), token, extra=extra
        )
        self._pending[pending.id] = pending
        return pending

    def receive_upload(self, ticket: str, content: bytes) -> bool:
        """Store bytes POSTed to an upload URL; False for an unknown ticket."""
        with self._lock:
            for pending in self._pending.values():
                if pending.ticket == ticket:
                    pending.content = content
                    return True
            return False

    def is_uploaded(self, file_id: str) -> bool:
        """Whether `file_id` was issued and its bytes arrived, but it is not completed yet."""
        pending = self._pending.get(file_id)
        return pending is not None and pending.content is not None

    def pop_uploaded(self, file_id: str) -> PendingUpload | None:
        """The pending upload with bytes received, removed from pending; None otherwise."""
        pending = self._pending.get(file_id)
        if pending is None or pending.content is None:
            return None
        return self._pending.pop(file_id)

    def store_file(self, obj: dict[str, Any], content: bytes) -> None:
        """Keep a file object and its bytes for files.info and downloads."""
        with self._lock:
            self._file_objects[obj["id"]] = obj
            self._file_content[obj["id"]] = content

    def file_object(self, file_id: str) -> dict[str, Any] | None:
        """The stored file object (live, caller copies)."""
        return self._file_objects.get(file_id)

    def serve_download(
        self, file_id: str, token: str | None, host: str
    ) -> tuple[bytes, str] | None:
        """(bytes, mimetype) when `token` may read the file, else None; always recorded."""
        with self._lock:
            obj = self._file_objects.get(file_id)
            ok = obj is not None and token in self._tokens
            self.downloads.append(Download(file_id, host, token, ok, time.time()))
            if not ok or obj is None:
                return None
            return self._file_content[file_id], obj["mimetype"]

def decode_args(args: dict[str, Any]) -> dict[str, Any]:
    """Drop the token and turn JSON-string fields (blocks, view, files...) into objects."""
    decoded = {k: v for k, v in args.items() if k != "token"}
    for key in JSON_ARGS:
        value = decoded.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            try:
                decoded[key] = json.loads(value)
            except ValueError:
                pass
    return decoded
