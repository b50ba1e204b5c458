"""What the fake Slack server remembers: plain records handed to tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One accepted Web API call; `ts` is the message ts it created or touched, if any."""

    method: str
    args: dict[str, Any]
    token: str | None
    ts: str | None
    at: float


@dataclass(frozen=True)
class Rejected:
    """A Web API call answered with ok=false or an HTTP error; never part of `calls`."""

    method: str
    args: dict[str, Any]
    token: str | None
    error: str
    status: int
    at: float


@dataclass(frozen=True)
class UploadedFile:
    """A file the app uploaded and completed via files.completeUploadExternal."""

    id: str
    filename: str
    title: str
    content: bytes
    channel: str | None
    thread_ts: str | None
    initial_comment: str | None
    at: float


@dataclass(frozen=True)
class Download:
    """One GET of a url_private(_download) link; `token` is the bearer token sent, if any."""

    file_id: str
    host: str
    token: str | None
    ok: bool
    at: float


@dataclass(frozen=True)
class Response:
    """One POST to a response_url handed out by the server."""

    url: str
    body: dict[str, Any]
    at: float


@dataclass(frozen=True)
class SocketAck:
    """One frame the Socket Mode client wrote back (an ack echoes `envelope_id`)."""

    envelope_id: str | None
    payload: dict[str, Any] | None
    raw: dict[str, Any]
    at: float


@dataclass
class Identity:
    """Who a bot token belongs to: what auth.test answers for it."""

    team_id: str = "T0TEAM"
    team: str = "Fake Co"
    team_domain: str = "fakeco"
    user_id: str = "U0BOT"
    user: str = "fakebot"
    bot_id: str = "B0BOT"
    app_id: str = "A0APP"
    enterprise_id: str | None = None


@dataclass
class PendingUpload:
    """A file id issued by files.getUploadURLExternal, waiting for bytes and completion."""

    id: str
    filename: str
    length: int
    ticket: str
    token: str
    content: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
