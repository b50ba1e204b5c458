"""Dataset files shared in a channel, thread or DM: `dataset add NAME` with the file, or the
file within 10 minutes of `/dataset add NAME`."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App as BoltApp
from slack_sdk import WebClient

from bot.blocks import fallback_text, reply_blocks
from bot.files import download, requested_name, staging_dir
from bot.listeners.common import actor_for, failure_reply
from tunebot.commands import parse
from tunebot.core import Core
from tunebot.datasets.uploads import take_pending
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.replies import Reply, error

log = logging.getLogger(__name__)
UPLOADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dataset-upload")


def _logged(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.exception("dataset upload failed")


def register(app: BoltApp, core: Core) -> None:
    """Register the file_share listener (and quietly accept other messages)."""

    @app.event({"type": "message", "subtype": "file_share"})
    def on_file(body: dict[str, Any], event: dict[str, Any], client: WebClient) -> None:
        """A shared file meant as a dataset: fetch, validate, store, answer in the thread."""
        team = body.get("team_id") or event.get("team", "")
        user, channel = event.get("user", ""), event["channel"]
        name = requested_name(event.get("text", ""))
        if name is None:
            try:
                name = take_pending(engine=core.engine, team_id=team, user_id=user, channel=channel)
            except Exception as exc:
                log.warning("pending upload lookup failed: %s", exc)
                return
        if name is None:
            return  # an ordinary file share, not for tunebot
        thread = event.get("thread_ts") or event["ts"]

        def work() -> None:
            reply = ingest(client, core, event.get("files") or [], team=team, user=user,
                           channel=channel, name=name)
            client.chat_postMessage(channel=channel, thread_ts=thread, text=fallback_text(reply),
                                    blocks=reply_blocks(reply), unfurl_links=False)

        # A 50 MB download must not hold the event's ack (Slack would redeliver it).
        UPLOADS.submit(_logged, work)

    @app.event("message")
    def on_message(event: dict[str, Any]) -> None:
        """Other messages need no answer (tunebot answers mentions and commands)."""


def ingest(client: WebClient, core: Core, files: list[dict[str, Any]], *, team: str, user: str,
           channel: str, name: str) -> Reply:
    """Download the (single) file and run `/dataset add NAME` on it."""
    if len(files) != 1:
        return error(f"share exactly one file with `dataset add {name}` (got {len(files)})")
    file = files[0]
    if file.get("file_access") == "check_file_info" or not file.get("url_private_download"):
        file = client.files_info(file=file["id"])["file"]
    token = client.token or ""
    folder = staging_dir(core.settings)
    try:
        path = download(file, token, core.settings, folder)
        actor = actor_for(core, team_id=team, user_id=user, channel=channel, thread_ts=None,
                          response_url=None, key=None)
        return execute(parse(f"/dataset add {name}"), actor, core, path).reply
    except UserError as exc:
        return error(str(exc), exc.usage)
    except Exception as exc:  # database away, network, a bug: answer, never crash
        return failure_reply(exc, "dataset upload")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
