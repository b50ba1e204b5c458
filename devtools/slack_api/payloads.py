"""Builders for what Slack sends to the app (HTTP bodies, Socket Mode envelopes) and signing.

Shapes follow shared/slack-payloads/ (team T0TEAM, app A0APP, bot U0BOT, human U0ALICE,
channel C0CHANNEL).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlencode

VERIFICATION_TOKEN = "fakeVerificationToken000"
COMMAND_RESPONSE_URL = (
    "https://hooks.slack.com/commands/T0TEAM/1000000000001/FakeResponseUrlSecret0001"
)
ACTION_RESPONSE_URL = (
    "https://hooks.slack.com/actions/T0TEAM/1000000000002/FakeResponseUrlSecret0002"
)


# ---- signing ---------------------------------------------------------------------------


def signature(body: bytes | str, secret: str, timestamp: int | str) -> str:
    """`v0=<hex>` for `body`, exactly as slack_sdk.signature.SignatureVerifier computes it."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    base = f"v0:{timestamp}:".encode() + raw
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def signed_headers(
    body: bytes | str,
    secret: str,
    timestamp: int | str | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> dict[str, str]:
    """Headers Slack sends with `body`: signature, timestamp, content type (+ retry headers)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    raw = body.encode("utf-8") if isinstance(body, str) else body
    is_json = raw.lstrip()[:1] == b"{"
    headers = {
        "Content-Type": "application/json" if is_json else "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(raw, secret, ts),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return headers


def new_trigger_id() -> str:
    """A trigger_id shaped like Slack's."""
    return f"{int(time.time())}.1000000001.{secrets.token_hex(16)}"


def _form(pairs: dict[str, str]) -> bytes:
    # urlencode quotes with quote_plus: spaces become "+", "/" and ":" are percent-encoded,
    # which is byte-for-byte what Slack sends.
    return urlencode(pairs).encode("ascii")


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---- slash commands --------------------------------------------------------------------


def slash_command_fields(
    text: str,
    command: str = "/prompt",
    team_id: str = "T0TEAM",
    user_id: str = "U0ALICE",
    channel_id: str = "C0CHANNEL",
    trigger_id: str | None = None,
    response_url: str = COMMAND_RESPONSE_URL,
    *,
    user_name: str = "alice",
    channel_name: str = "bot-testing",
    team_domain: str = "fakeco",
    api_app_id: str = "A0APP",
    token: str = VERIFICATION_TOKEN,
) -> dict[str, str]:
    """The decoded slash command fields, in Slack's order (slash_command.json)."""
    return {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or new_trigger_id(),
    }


def slash_command_body(
    text: str,
    command: str = "/prompt",
    team_id: str = "T0TEAM",
    user_id: str = "U0ALICE",
    channel_id: str = "C0CHANNEL",
    trigger_id: str | None = None,
    response_url: str = COMMAND_RESPONSE_URL,
    **kwargs: str,
) -> bytes:
    """The form-encoded POST body of a slash command (like slash_command.form)."""
    return _form(
        slash_command_fields(
            text, command, team_id, user_id, channel_id, trigger_id, response_url, **kwargs
        )
    )


# ---- Events API ------------------------------------------------------------------------


def event_envelope(
    event: dict[str, Any],
    event_id: str | None = None,
    team_id: str = "T0TEAM",
    *,
    api_app_id: str = "A0APP",
    bot_user_id: str = "U0BOT",
    event_time: int | None = None,
) -> dict[str, Any]:
    """The event_callback envelope around `event` (event_app_mention.json)."""
    envelope: dict[str, Any] = {"token": VERIFICATION_TOKEN, "team_id": team_id}
    if event.get("type") == "message":
        envelope.update({"context_team_id": team_id, "context_enterprise_id": None})
    envelope.update(
        {
            "api_app_id": api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
            "event_time": event_time or int(float(event.get("event_ts") or time.time())),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }
    )
    return envelope


def event_body(
    event: dict[str, Any], event_id: str | None = None, team_id: str = "T0TEAM", **kwargs: Any
) -> bytes:
    """The JSON POST body of an Events API delivery."""
    return json.dumps(event_envelope(event, event_id, team_id, **kwargs)).encode("utf-8")


def _ts() -> str:
    return f"{time.time():.6f}"


def app_mention_event(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0CHANNEL",
    ts: str | None = None,
    thread_ts: str | None = None,
    team: str = "T0TEAM",
) -> dict[str, Any]:
    """An app_mention event (inside a thread when thread_ts is given)."""
    ts = ts or _ts()
    event: dict[str, Any] = {
        "user": user,
        "type": "app_mention",
        "ts": ts,
        "client_msg_id": str(uuid.uuid4()),
        "text": text,
        "team": team,
    }
    if thread_ts:
        event.update({"thread_ts": thread_ts, "parent_user_id": user})
    event.update({"channel": channel, "event_ts": ts})
    return event


def message_event(
    text: str,
    *,
    user: str = "U0ALICE",
    channel: str = "C0CHANNEL",
    ts: str | None = None,
    thread_ts: str | None = None,
    files: list[dict[str, Any]] | None = None,
    channel_type: str = "channel",
) -> dict[str, Any]:
    """A user `message` event; with `files` it is a `file_share` (event_message_file_share)."""
    ts = ts or _ts()
    event: dict[str, Any] = {"type": "message", "text": text}
    if files is not None:
        event.update({"files": files, "upload": False})
    event.update(
        {"user": user, "display_as_bot": False, "ts": ts, "client_msg_id": str(uuid.uuid4())}
    )
    if thread_ts:
        event.update({"thread_ts": thread_ts, "parent_user_id": user})
    event["channel"] = channel
    if files is not None:
        event["subtype"] = "file_share"
    event.update({"event_ts": ts, "channel_type": channel_type})
    return event


def app_home_opened_event(
    user: str = "U0ALICE",
    *,
    channel: str = "D0ALICEDM",
    tab: str = "home",
    view: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An app_home_opened event (`view` only when a Home view was published before)."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user,
        "channel": channel,
        "tab": tab,
    }
    if view is not None:
        event["view"] = view
    event["event_ts"] = _ts()
    return event


def url_verification_body(challenge: str = "FakeChallenge0123456789") -> bytes:
    """The one-time url_verification handshake body."""
    return json.dumps(
        {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    ).encode("utf-8")


# ---- interactivity ---------------------------------------------------------------------


def _user(user_id: str, team_id: str) -> dict[str, str]:
    name = user_id.removeprefix("U0").lower() if user_id.startswith("U0") else user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def block_actions_payload(
    action_id: str,
    value: str | None = None,
    *,
    block_id: str = "actions",
    user_id: str = "U0ALICE",
    team_id: str = "T0TEAM",
    channel_id: str = "C0CHANNEL",
    message: dict[str, Any] | None = None,
    thread_ts: str | None = None,
    view: dict[str, Any] | None = None,
    action: dict[str, Any] | None = None,
    trigger_id: str | None = None,
    response_url: str = ACTION_RESPONSE_URL,
) -> dict[str, Any]:
    """A block_actions payload for a button click (block_actions.json).

    Pass the clicked bot `message` (as the server stored it) or a `view` for a modal/Home click.
    """
    clicked = action or {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": action_id, "emoji": True},
        "value": value or "",
        "type": "button",
        "action_ts": _ts(),
    }
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id, team_id),
        "api_app_id": "A0APP",
        "token": VERIFICATION_TOKEN,
    }
    if view is not None:
        payload["container"] = {"type": "view", "view_id": view.get("id", "")}
    else:
        message = message or {"type": "message", "ts": _ts(), "text": ""}
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel_id,
            "is_ephemeral": False,
        }
        if thread_ts or message.get("thread_ts"):
            container["thread_ts"] = thread_ts or message["thread_ts"]
        payload["container"] = container
    payload.update(
        {
            "trigger_id": trigger_id or new_trigger_id(),
            "team": {"id": team_id, "domain": "fakeco"},
            "enterprise": None,
            "is_enterprise_install": False,
        }
    )
    if view is not None:
        payload["view"] = view
    else:
        payload["channel"] = {"id": channel_id, "name": "bot-testing"}
        payload["message"] = message
        payload["response_url"] = response_url
    payload.update({"state": {"values": {}}, "actions": [clicked]})
    return payload


def block_actions_body(action_id: str, value: str | None = None, **kwargs: Any) -> bytes:
    """The form-encoded `payload=` body of a block_actions request."""
    return _form({"payload": _compact(block_actions_payload(action_id, value, **kwargs))})


def view_submission_payload(
    values: dict[str, dict[str, Any]],
    *,
    callback_id: str = "",
    private_metadata: str = "",
    view_id: str = "V0MODAL",
    user_id: str = "U0ALICE",
    team_id: str = "T0TEAM",
    blocks: list[dict[str, Any]] | None = None,
    trigger_id: str | None = None,
    hash_: str = "1767225783.Zr8tWq2m",
    title: str = "Review dataset",
) -> dict[str, Any]:
    """A view_submission payload; `values` maps block_id -> action_id -> value (or full dict)."""
    state = {
        block: {
            action: val if isinstance(val, dict) else {"type": "plain_text_input", "value": val}
            for action, val in actions.items()
        }
        for block, actions in values.items()
    }
    plain = {"type": "plain_text", "emoji": True}
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": "fakeco"},
        "user": _user(user_id, team_id),
        "api_app_id": "A0APP",
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": blocks or [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": hash_,
            "title": {**plain, "text": title},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {**plain, "text": "Cancel"},
            "submit": {**plain, "text": "Submit"},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": "A0APP",
            "external_id": "",
            "app_installed_team_id": team_id,
            "bot_id": "B0BOT",
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def view_submission_body(values: dict[str, dict[str, Any]], **kwargs: Any) -> bytes:
    """The form-encoded `payload=` body of a view_submission request."""
    return _form({"payload": _compact(view_submission_payload(values, **kwargs))})


# ---- Socket Mode -----------------------------------------------------------------------


def socket_envelope(
    payload: dict[str, Any],
    type_: str = "events_api",
    *,
    envelope_id: str | None = None,
    retry_attempt: int = 0,
    retry_reason: str = "",
) -> dict[str, Any]:
    """A Socket Mode frame: type_ is slash_commands, events_api or interactive."""
    envelope: dict[str, Any] = {
        "envelope_id": envelope_id or str(uuid.uuid4()),
        "payload": payload,
        "type": type_,
        "accepts_response_payload": type_ == "slash_commands"
        or payload.get("type") == "view_submission",
    }
    if type_ == "events_api":
        envelope.update({"retry_attempt": retry_attempt, "retry_reason": retry_reason})
    return envelope
