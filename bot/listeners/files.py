"""Dataset files shared in a channel, thread or DM: `dataset add NAME` with the file, or the
file within 10 minutes of `/dataset add NAME`.

Slack delivers an event again when our ack was late (`X-Slack-Retry-Num`), and the same file
may arrive in two events at once; the 2-thread upload pool would run both. Each share is
therefore taken once: by its event id and message for an hour, and by file and dataset name
while it is being added. Every failure is answered in the file's thread.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slack_bolt import App as BoltApp
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.blocks import fallback_text, reply_blocks
from bot.files import download, requested, staging_dir
from bot.listeners.common import actor_for, failure_reply, retry_num
from tunebot.commands import parse
from tunebot.core import Core, Outcome
from tunebot.datasets.uploads import take_pending
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.replies import error

log = logging.getLogger(__name__)
UPLOADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dataset-upload")
# Slack retries an event for about an hour at most; a share seen in that time is not taken again.
SEEN_SECONDS = 3600.0
SEEN_LIMIT = 20_000


class Seen:
    """Keys this process has taken, each until it expires or is released (oldest dropped first
    past `limit`, so a flood of events cannot grow it without bound)."""

    def __init__(self, seconds: float = SEEN_SECONDS, limit: int = SEEN_LIMIT) -> None:
        self.seconds = seconds
        self.limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, keys: list[str], seconds: float | None = None) -> bool:
        """Take every key, or none when one of them is already taken (False)."""
        now = time.monotonic()
        with self._lock:
            while self._until and (next(iter(self._until.values())) <= now
                                   or len(self._until) > self.limit):
                self._until.popitem(last=False)
            if any(self._until.get(k, 0.0) > now for k in keys):
                return False
            until = now + (self.seconds if seconds is None else seconds)
            for k in keys:
                self._until.pop(k, None)
                self._until[k] = until
            return True

    def release(self, keys: list[str]) -> None:
        """Give keys back (the share they stood for is no longer in flight)."""
        with self._lock:
            for k in keys:
                self._until.pop(k, None)


SEEN = Seen()


def _logged(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.exception("dataset upload failed")


def register(app: BoltApp, core: Core) -> None:
    """Register the file_share listener (and quietly accept other messages)."""

    @app.event({"type": "message", "subtype": "file_share"})
    def on_file(body: dict[str, Any], event: dict[str, Any], client: WebClient,
                request: BoltRequest) -> None:
        """A shared file meant as a dataset: fetch, validate, store, answer in the thread."""
        team = body.get("team_id") or event.get("team", "")
        user, channel = event.get("user", ""), event["channel"]
        # The same delivery again (a retry, or a second event for the same message).
        delivery = [f"message:{team}:{channel}:{event.get('ts', '')}"]
        if body.get("event_id"):
            delivery.append(f"event:{team}:{body['event_id']}")
        if not SEEN.claim(delivery):
            log.info("file share %s in %s already taken; a re-delivery is ignored",
                     body.get("event_id"), channel)
            return
        retried = retry_num(request) > 0
        asked = requested(event.get("text", ""))
        if asked is None:
            try:
                asked = take_pending(engine=core.engine, team_id=team, user_id=user,
                                     channel=channel)
            except Exception as exc:
                log.warning("pending upload lookup failed: %s", exc)
                SEEN.release(delivery)  # not taken: a retry may still find it
                return
        if asked is None:
            return  # an ordinary file share, not for tunebot
        name = asked.name
        thread = event.get("thread_ts") or event["ts"]
        files = event.get("files") or []
        # The same file for the same dataset in two events at once: one add, one answer.
        adding = [f"file:{team}:{f.get('id', '')}:{name}" for f in files if f.get("id")]
        if not SEEN.claim(adding):
            log.info("file %s is already being added as %s; ignored", adding, name)
            return

        def work() -> None:
            try:
                outcome = ingest(client, core, files, team=team, user=user, channel=channel,
                                 name=name, expected_column=asked.expected_column)
            finally:
                SEEN.release(adding)
            if retried and outcome.extra.get("created") is False:
                return  # the first delivery already answered "added" for this file
            reply = outcome.reply
            client.chat_postMessage(channel=channel, thread_ts=thread, text=fallback_text(reply),
                                    blocks=reply_blocks(reply), unfurl_links=False)

        # A 50 MB download must not hold the event's ack (Slack would redeliver it).
        UPLOADS.submit(_logged, work)

    @app.event("message")
    def on_message(event: dict[str, Any]) -> None:
        """Other messages need no answer (tunebot answers mentions and commands)."""


def ingest(client: WebClient, core: Core, files: list[dict[str, Any]], *, team: str, user: str,
           channel: str, name: str, expected_column: str | None = None) -> Outcome:
    """Download the (single) file and run `/dataset add NAME [expected=COLUMN]` on it; every
    failure is an answer (never an exception), so the thread always hears how it went."""
    if len(files) != 1:
        return Outcome(error(f"share exactly one file with `dataset add {name}` "
                             f"(got {len(files)})"))
    file = files[0]
    label = str(file.get("name") or "the file")[:100]
    folder: Path | None = None
    try:
        if file.get("file_access") == "check_file_info" or not file.get("url_private_download"):
            file = _file_info(client, file)
        try:
            folder = staging_dir(core.settings)
        except OSError as exc:
            log.error("dataset upload of %s: cannot create a staging folder: %s", label, exc)
            raise UserError(f"{label} was not stored: the bot cannot write its upload folder "
                            f"({exc.strerror or exc.__class__.__name__}); nothing was added — "
                            "tell your tunebot admin (TUNEBOT_VAR_DIR)") from exc
        path = download(file, client.token or "", core.settings, folder)
        actor = actor_for(core, team_id=team, user_id=user, channel=channel, thread_ts=None,
                          response_url=None, key=None)
        # The store answers a dataset folder it cannot write with a UserError of its own.
        cmd = parse(f"/dataset add {name}")
        if expected_column is not None:
            # Set on the parsed command, not spliced into its text: any column name is safe.
            cmd.params["expected"] = expected_column
        return execute(cmd, actor, core, path)
    except UserError as exc:
        return Outcome(error(str(exc), exc.usage))
    except Exception as exc:  # database away, disk full, a bug: answer, never crash
        return Outcome(failure_reply(exc, "dataset upload"))
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _file_info(client: WebClient, file: dict[str, Any]) -> dict[str, Any]:
    try:
        info: dict[str, Any] = client.files_info(file=file["id"])["file"]
    except SlackApiError as exc:
        code = exc.response.get("error", "unknown") if exc.response is not None else "unknown"
        raise UserError(f"Slack did not let the bot read this file ({code}): is the app in this "
                        "channel, with the files:read scope?") from exc
    return info

