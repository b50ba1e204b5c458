"""Web API methods: each takes (workspace, args, identity) and returns (body, ts or None).

They run under the workspace lock and raise SlackError for ok=false answers.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable
from typing import Any

from . import blockcheck, bodies
from .records import Identity, UploadedFile
from .workspace import SlackError, Workspace

Result = tuple[dict[str, Any], str | None]
MAX_TEXT = blockcheck.MAX_TEXT


def _require(args: dict[str, Any], *names: str) -> None:
    if any(args.get(name) in (None, "") for name in names):
        raise SlackError("invalid_arguments")


def _content(
    args: dict[str, Any], *, max_blocks: int = blockcheck.MAX_BLOCKS
) -> tuple[str, list[Any] | None]:
    """(text, blocks) of a message call, validated the way Slack does."""
    text = args.get("text")
    blocks = args.get("blocks")
    if not text and not blocks and not args.get("attachments"):
        raise SlackError("no_text")
    if blocks is not None:
        found = blockcheck.problems(blocks, max_blocks=max_blocks)
        if found:
            raise SlackError(
                "invalid_blocks",
                errors=found,
                response_metadata={"messages": [f"[ERROR] {p}" for p in found]},
            )
    text = "" if text is None else str(text)
    if len(text) > MAX_TEXT:
        raise SlackError("msg_too_long")
    return text, blocks


def _view(args: dict[str, Any], *, kinds: tuple[str, ...]) -> dict[str, Any]:
    view = args.get("view")
    if not isinstance(view, dict) or view.get("type") not in kinds:
        raise SlackError("invalid_arguments")
    found = blockcheck.view_problems(view)
    if found:
        raise SlackError("invalid_arguments", response_metadata={"messages": found})
    return view


def _view_hash() -> str:
    return f"{int(time.time())}.{secrets.token_urlsafe(6)[:8]}"


def auth_test(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """auth.test."""
    return bodies.auth_test(who), None


def api_test(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """api.test echoes its arguments."""
    return {"ok": True, "args": args}, None


def chat_post_message(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """chat.postMessage, threaded when thread_ts is given."""
    channel = ws.resolve_channel(args.get("channel"), posting=True)
    text, blocks = _content(args)
    ts = ws.next_ts()
    thread_ts = args.get("thread_ts") or None
    parent = ws.find_message(channel, thread_ts) if thread_ts else None
    extra = {k: args[k] for k in ("attachments", "metadata") if args.get(k)}
    if thread_ts and str(args.get("reply_broadcast", "")).lower() in ("1", "true"):
        extra["subtype"] = "thread_broadcast"
    message = bodies.bot_message(
        who,
        ts=ts,
        text=text,
        blocks=blocks,
        thread_ts=thread_ts,
        parent_user_id=(parent or {}).get("user"),
        extra=extra,
    )
    ws.store_message(channel, message)
    return {"ok": True, "channel": channel, "ts": ts, "message": copy.deepcopy(message)}, ts


def chat_update(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """chat.update: text/blocks replace the stored message's; omitted blocks are kept."""
    _require(args, "channel", "ts")
    channel = ws.resolve_channel(args["channel"])
    message = ws.find_message(channel, str(args["ts"]))
    if message is None:
        raise SlackError("message_not_found")
    text, blocks = _content(args)
    if "text" in args:
        message["text"] = text
    if blocks is not None:
        message["blocks"] = blocks
    if args.get("attachments"):
        message["attachments"] = args["attachments"]
    message["edited"] = {"user": who.user_id, "ts": ws.next_ts()}
    shown = {
        k: copy.deepcopy(v)
        for k, v in message.items()
        if k not in ("ts", "thread_ts", "parent_user_id", "edited")
    }
    body = {
        "ok": True,
        "channel": channel,
        "ts": message["ts"],
        "text": message["text"],
        "message": shown,
    }
    return body, message["ts"]


def chat_post_ephemeral(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """chat.postEphemeral: only `message_ts` comes back."""
    channel = ws.resolve_channel(args.get("channel"), posting=True)
    _require(args, "user")
    text, blocks = _content(args)
    ts = ws.next_ts()
    ws.store_ephemeral(
        {
            "channel": channel,
            "user": args["user"],
            "ts": ts,
            "text": text,
            "blocks": blocks,
            "thread_ts": args.get("thread_ts") or None,
        }
    )
    return {"ok": True, "message_ts": ts}, ts


def files_get_upload_url(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """files.getUploadURLExternal: the upload URL is on this server."""
    _require(args, "filename", "length")
    try:
        length = int(args["length"])
    except (TypeError, ValueError):
        raise SlackError("invalid_arguments") from None
    if length < 0:
        raise SlackError("invalid_arguments")
    extra = {k: args[k] for k in ("alt_txt", "snippet_type") if args.get(k)}
    pending = ws.begin_upload(
        filename=str(args["filename"]), length=length, token=ws.bot_token, extra=extra
    )
    url = f"{ws.base_url}upload/v1/{pending.ticket}"
    return {"ok": True, "upload_url": url, "file_id": pending.id}, None


def files_complete_upload(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """files.completeUploadExternal: records the files and shares them where asked."""
    files = args.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        raise SlackError("invalid_arguments")
    channels = [c for c in str(args.get("channels") or "").split(",") if c]
    if args.get("channel_id"):
        channels.insert(0, str(args["channel_id"]))
    thread_ts = args.get("thread_ts") or None
    if thread_ts and not channels:
        raise SlackError("invalid_arguments")
    channels = [ws.resolve_channel(c, posting=True) for c in channels]
    if not all(ws.is_uploaded(str(f.get("id"))) for f in files):
        raise SlackError("file_not_found")
    comment = args.get("initial_comment") or None
    objects, now = [], time.time()
    targets: list[str | None] = [*channels] or [None]  # no channel: one record, unshared
    for entry in files:
        pending = ws.pop_uploaded(str(entry["id"]))
        assert pending is not None and pending.content is not None
        title = str(entry.get("title") or pending.filename)
        obj = bodies.file_object(
            file_id=pending.id,
            name=pending.filename,
            title=title,
            content=pending.content,
            user=who.user_id,
            team_id=who.team_id,
            files_base=ws.base_url,
        )
        ws.store_file(obj, pending.content)
        objects.append(obj)
        for channel in targets:
            ws.files.append(
                UploadedFile(
                    pending.id,
                    pending.filename,
                    title,
                    pending.content,
                    channel,
                    thread_ts if channel else None,
                    comment,
                    now,
                )
            )
    body = {"ok": True, "files": copy.deepcopy(objects)}
    first_ts = None
    for channel in channels:
        ts = ws.next_ts()
        first_ts = first_ts or ts
        for obj in objects:
            bodies.share_file(
                obj,
                channel=channel,
                ts=ts,
                thread_ts=thread_ts,
                user=who.user_id,
                team_id=who.team_id,
                channel_name=ws.channels[channel]["name"],
            )
        parent = ws.find_message(channel, thread_ts) if thread_ts else None
        ws.store_message(
            channel,
            bodies.bot_message(
                who,
                ts=ts,
                text=comment or "",
                blocks=None,
                thread_ts=thread_ts,
                parent_user_id=(parent or {}).get("user"),
                extra={"files": copy.deepcopy(objects), "upload": True},
            ),
        )
    return body, first_ts


def files_info(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """files.info."""
    _require(args, "file")
    obj = ws.file_object(str(args["file"]))
    if obj is None:
        raise SlackError("file_not_found")
    return {
        "ok": True,
        "file": copy.deepcopy(obj),
        "comments": [],
        "response_metadata": {"next_cursor": ""},
    }, None


def views_open(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """views.open (and views.push): a new modal with a fresh id and hash."""
    _require(args, "trigger_id")
    view = _view(args, kinds=("modal",))
    view_id = ws.next_id("V")
    stored = bodies.view_object(
        view, view_id=view_id, who=who, hash_=_view_hash(), root_view_id=view_id
    )
    ws.views[view_id] = stored
    return {"ok": True, "view": copy.deepcopy(stored)}, None


def views_update(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """views.update by view_id or external_id; a stale hash answers hash_conflict."""
    if not args.get("view_id") and not args.get("external_id"):
        raise SlackError("invalid_arguments")
    view = _view(args, kinds=("modal", "home"))
    current = ws.views.get(str(args.get("view_id") or ""))
    if current is None and args.get("external_id"):
        current = next(
            (v for v in ws.views.values() if v["external_id"] == args["external_id"]), None
        )
    if current is None:
        raise SlackError("not_found")
    if args.get("hash") and args["hash"] != current["hash"]:
        raise SlackError("hash_conflict")
    stored = bodies.view_object(
        view,
        view_id=current["id"],
        who=who,
        hash_=_view_hash(),
        root_view_id=current["root_view_id"],
        previous_view_id=current["previous_view_id"],
    )
    ws.views[current["id"]] = stored
    return {"ok": True, "view": copy.deepcopy(stored)}, None


def views_publish(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """views.publish: one Home tab per user, same id across publishes."""
    _require(args, "user_id")
    view = _view(args, kinds=("home",))
    user_id = str(args["user_id"])
    current = ws.home_views.get(user_id)
    if current and args.get("hash") and args["hash"] != current["hash"]:
        raise SlackError("hash_conflict")
    view_id = current["id"] if current else ws.next_id("V")
    stored = bodies.view_object(
        view, view_id=view_id, who=who, hash_=_view_hash(), root_view_id=view_id
    )
    ws.home_views[user_id] = stored
    ws.views[view_id] = stored
    return {"ok": True, "view": copy.deepcopy(stored)}, None


def users_info(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """users.info."""
    _require(args, "user")
    user = ws.users.get(str(args["user"]))
    if user is None:
        raise SlackError("user_not_found")
    return {"ok": True, "user": copy.deepcopy(user)}, None


def conversations_info(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """conversations.info."""
    channel = ws.resolve_channel(args.get("channel"))
    return {"ok": True, "channel": copy.deepcopy(ws.channels[channel])}, None


def usergroups_users_list(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """usergroups.users.list from `ws.usergroups`."""
    _require(args, "usergroup")
    users = ws.usergroups.get(str(args["usergroup"]))
    if users is None:
        raise SlackError("no_such_subteam")
    return {"ok": True, "users": list(users)}, None


def oauth_v2_access(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """oauth.v2.access: client credentials (form or HTTP Basic) plus a code from add_oauth_code."""
    _require(args, "code")
    if args.get("client_id") != ws.client_id:
        raise SlackError("invalid_client_id")
    if args.get("client_secret") != ws.client_secret:
        raise SlackError("bad_client_secret")
    body = ws.redeem_oauth_code(str(args["code"]))
    if body is None:
        raise SlackError("invalid_code")
    return body, None


def apps_connections_open(ws: Workspace, args: dict[str, Any], who: Identity) -> Result:
    """apps.connections.open (app token): a ws:// URL on this server."""
    ws_base = "ws" + ws.base_url.removeprefix("http")
    return {
        "ok": True,
        "url": f"{ws_base}link/?ticket={ws.issue_ticket()}&app_id={who.app_id}",
    }, None


METHODS: dict[str, Callable[[Workspace, dict[str, Any], Identity], Result]] = {
    "api.test": api_test,
    "auth.test": auth_test,
    "chat.postMessage": chat_post_message,
    "chat.update": chat_update,
    "chat.postEphemeral": chat_post_ephemeral,
    "files.getUploadURLExternal": files_get_upload_url,
    "files.completeUploadExternal": files_complete_upload,
    "files.info": files_info,
    "views.open": views_open,
    "views.push": views_open,
    "views.update": views_update,
    "views.publish": views_publish,
    "users.info": users_info,
    "conversations.info": conversations_info,
    "usergroups.users.list": usergroups_users_list,
    "oauth.v2.access": oauth_v2_access,
    "apps.connections.open": apps_connections_open,
}
