"""Builders for Slack's answer bodies, shaped like slack-payloads/web_api_responses.json."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from .records import Identity

ICONS = {
    "image_36": "https://a.slack-edge.com/80588/img/plugins/app/bot_36.png",
    "image_48": "https://a.slack-edge.com/80588/img/plugins/app/bot_48.png",
    "image_72": "https://a.slack-edge.com/80588/img/plugins/app/service_72.png",
}

# Slack labels these by extension; everything else is a generic binary upload.
FILETYPES = {
    "txt": ("text/plain", "text", "Plain Text"),
    "jsonl": ("text/plain", "text", "Plain Text"),
    "json": ("application/json", "json", "JSON"),
    "csv": ("text/csv", "csv", "CSV"),
    "yaml": ("text/plain", "yaml", "YAML"),
    "yml": ("text/plain", "yaml", "YAML"),
    "md": ("text/plain", "markdown", "Markdown (raw)"),
    "png": ("image/png", "png", "PNG"),
    "pdf": ("application/pdf", "pdf", "PDF"),
}
BINARY = ("application/octet-stream", "binary", "Binary")
PREVIEW_LINES = 5


def bot_profile(who: Identity) -> dict[str, Any]:
    """The `bot_profile` object Slack attaches to bot messages."""
    return {
        "id": who.bot_id,
        "app_id": who.app_id,
        "user_id": who.user_id,
        "name": who.user,
        "icons": dict(ICONS),
        "deleted": False,
        "updated": 1767000000,
        "team_id": who.team_id,
    }


def bot_message(
    who: Identity,
    *,
    ts: str,
    text: str,
    blocks: list[Any] | None,
    thread_ts: str | None = None,
    parent_user_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A message posted by the bot, as chat.postMessage echoes it."""
    msg: dict[str, Any] = {
        "user": who.user_id,
        "type": "message",
        "ts": ts,
        "bot_id": who.bot_id,
        "app_id": who.app_id,
        "text": text,
        "team": who.team_id,
        "bot_profile": bot_profile(who),
    }
    if thread_ts:
        msg["thread_ts"] = thread_ts
        if parent_user_id:
            msg["parent_user_id"] = parent_user_id
    if blocks is not None:
        msg["blocks"] = blocks
    msg.update(extra or {})
    return msg


def auth_test(who: Identity) -> dict[str, Any]:
    """auth.test for a bot token."""
    return {
        "ok": True,
        "url": f"https://{who.team_domain}.slack.com/",
        "team": who.team,
        "user": who.user,
        "team_id": who.team_id,
        "user_id": who.user_id,
        "bot_id": who.bot_id,
        "is_enterprise_install": False,
    }


def file_types(name: str) -> tuple[str, str, str]:
    """(mimetype, filetype, pretty_type) Slack would report for a file name."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return FILETYPES.get(ext, BINARY)


def _preview(content: bytes) -> dict[str, Any]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    lines = text.splitlines()
    shown = lines[:PREVIEW_LINES]
    return {
        "preview": "\n".join(shown),
        "preview_highlight": '<div class="CodeMirror cm-s-default CodeMirrorServer">\n'
        '<div class="CodeMirror-code">\n'
        + "".join(f"<div><pre>{html.escape(line)}</pre></div>\n" for line in shown)
        + "</div>\n</div>\n",
        "lines": len(lines),
        "lines_more": max(0, len(lines) - PREVIEW_LINES),
        "preview_is_truncated": len(lines) > PREVIEW_LINES,
    }


def file_object(
    *,
    file_id: str,
    name: str,
    title: str,
    content: bytes,
    user: str,
    team_id: str,
    files_base: str,
    created: int | None = None,
) -> dict[str, Any]:
    """A full Slack file object whose private URLs point at `files_base` (ends with /)."""
    mimetype, filetype, pretty = file_types(name)
    created = created or int(time.time())
    quoted = quote(name)
    obj: dict[str, Any] = {
        "id": file_id,
        "created": created,
        "timestamp": created,
        "name": name,
        "title": title,
        "mimetype": mimetype,
        "filetype": filetype,
        "pretty_type": pretty,
        "user": user,
        "user_team": team_id,
        "editable": filetype != "binary",
        "size": len(content),
        "mode": "snippet" if mimetype.startswith("text/") else "hosted",
        "is_external": False,
        "external_type": "",
        "is_public": False,
        "public_url_shared": False,
        "display_as_bot": False,
        "username": "",
        "url_private": f"{files_base}files-pri/{team_id}-{file_id}/{quoted}",
        "url_private_download": f"{files_base}files-pri/{team_id}-{file_id}/download/{quoted}",
        "permalink": f"https://fakeco.slack.com/files/{user}/{file_id}/{quoted}",
        "permalink_public": f"https://slack-files.com/{team_id}-{file_id}-0a1b2c3d4e",
        "edit_link": f"https://fakeco.slack.com/files/{user}/{file_id}/{quoted}/edit",
    }
    obj.update(_preview(content))
    obj.update(
        {
            "comments_count": 0,
            "is_starred": False,
            "has_rich_preview": False,
            "file_access": "visible",
            "shares": {},
            "channels": [],
            "groups": [],
            "ims": [],
            "has_more_shares": False,
        }
    )
    return obj


def share_file(
    obj: dict[str, Any],
    *,
    channel: str,
    ts: str,
    thread_ts: str | None,
    user: str,
    channel_name: str,
    team_id: str,
) -> None:
    """Record in a file object that it was shared into `channel` (optionally a thread)."""
    kind = "private" if channel.startswith(("G", "D")) else "public"
    share: dict[str, Any] = {
        "share_user_id": user,
        "ts": ts,
        "channel_name": channel_name,
        "team_id": team_id,
    }
    if thread_ts:
        share["thread_ts"] = thread_ts
    obj.setdefault("shares", {}).setdefault(kind, {}).setdefault(channel, []).append(share)
    listing = {"D": "ims", "G": "groups"}.get(channel[:1], "channels")
    if channel not in obj.setdefault(listing, []):
        obj[listing].append(channel)
    if kind == "public":
        obj["is_public"] = True


def view_object(
    view: dict[str, Any],
    *,
    view_id: str,
    who: Identity,
    hash_: str,
    root_view_id: str,
    previous_view_id: str | None = None,
) -> dict[str, Any]:
    """The stored view Slack answers from views.open/update/publish."""
    is_home = view.get("type") == "home"
    default_title = {"type": "plain_text", "text": "View Title", "emoji": True}
    return {
        "id": view_id,
        "team_id": who.team_id,
        "type": view.get("type"),
        "blocks": view.get("blocks", []),
        "private_metadata": view.get("private_metadata", ""),
        "callback_id": view.get("callback_id", ""),
        "state": {"values": {}},
        "hash": hash_,
        "title": view.get("title", default_title),
        "clear_on_close": bool(view.get("clear_on_close", False)),
        "notify_on_close": bool(view.get("notify_on_close", False)),
        "close": None if is_home else view.get("close"),
        "submit": None if is_home else view.get("submit"),
        "previous_view_id": previous_view_id,
        "root_view_id": root_view_id,
        "app_id": who.app_id,
        "external_id": view.get("external_id", ""),
        "app_installed_team_id": who.team_id,
        "bot_id": who.bot_id,
    }


def user_object(
    user_id: str,
    name: str,
    *,
    team_id: str = "T0TEAM",
    real_name: str | None = None,
    email: str | None = None,
    is_admin: bool = False,
    is_bot: bool = False,
    tz: str = "Europe/Berlin",
) -> dict[str, Any]:
    """A users.info `user` object."""
    real_name = real_name or name.title()
    first, _, last = real_name.partition(" ")
    return {
        "id": user_id,
        "team_id": team_id,
        "name": name,
        "deleted": False,
        "color": "9f69e7",
        "real_name": real_name,
        "tz": tz,
        "tz_label": "Central European Time",
        "tz_offset": 3600,
        "profile": {
            "title": "",
            "phone": "",
            "skype": "",
            "real_name": real_name,
            "real_name_normalized": real_name,
            "display_name": name,
            "display_name_normalized": name,
            "status_text": "",
            "status_emoji": "",
            "status_expiration": 0,
            "avatar_hash": "0a1b2c3d4e5f",
            "email": email or f"{name}@example.com",
            "first_name": first,
            "last_name": last,
            "image_48": "https://avatars.slack-edge.com/2026-01-01/0a1b2c3d4e5f_48.png",
            "team": team_id,
        },
        "is_admin": is_admin,
        "is_owner": False,
        "is_primary_owner": False,
        "is_restricted": False,
        "is_ultra_restricted": False,
        "is_bot": is_bot,
        "is_app_user": False,
        "updated": 1766000000,
        "is_email_confirmed": True,
        "who_can_share_contact_card": "EVERYONE",
    }


def channel_object(
    channel_id: str,
    name: str,
    *,
    team_id: str = "T0TEAM",
    is_private: bool = False,
    is_member: bool = True,
    creator: str = "U0ALICE",
) -> dict[str, Any]:
    """A conversations.info `channel` object."""
    is_im = channel_id.startswith("D")
    return {
        "id": channel_id,
        "name": name,
        "is_channel": not is_im and not is_private,
        "is_group": is_private and not is_im,
        "is_im": is_im,
        "is_mpim": False,
        "is_private": is_private or is_im,
        "created": 1760000000,
        "is_archived": False,
        "is_general": False,
        "unlinked": 0,
        "name_normalized": name,
        "is_shared": False,
        "is_frozen": False,
        "is_org_shared": False,
        "is_pending_ext_shared": False,
        "pending_shared": [],
        "context_team_id": team_id,
        "updated": 1767225600123,
        "parent_conversation": None,
        "creator": creator,
        "is_ext_shared": False,
        "shared_team_ids": [team_id],
        "pending_connected_team_ids": [],
        "is_member": is_member,
        "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": "", "creator": "", "last_set": 0},
        "previous_names": [],
    }


def oauth_access(
    *,
    bot_token: str,
    who: Identity,
    scope: str,
    user_id: str,
    user_scope: str,
    user_token: str | None,
) -> dict[str, Any]:
    """oauth.v2.access success body for a bot install."""
    authed_user: dict[str, Any] = {"id": user_id}
    if user_token:
        authed_user.update({"scope": user_scope, "access_token": user_token, "token_type": "user"})
    return {
        "ok": True,
        "app_id": who.app_id,
        "authed_user": authed_user,
        "scope": scope,
        "token_type": "bot",
        "access_token": bot_token,
        "bot_user_id": who.user_id,
        "team": {"id": who.team_id, "name": who.team},
        "enterprise": None,
        "is_enterprise_install": False,
    }
