"""The notifier: posts job events to Slack threads, once each, in order, rate-limited, retried."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from sqlalchemy.engine import Engine

from bot.blocks import fallback_text, images, reply_blocks
from bot.home import refresh_home_quietly
from bot.oauth import bot_token_for
from tunebot import jobs
from tunebot.buttons import buttons_for, cancel_button
from tunebot.jobs import events
from tunebot.models import Job, JobEvent
from tunebot.replies import Reply, actions, section
from tunebot.settings import Settings

log = logging.getLogger(__name__)
CLAIM_SECONDS = 120


def make_client(settings: Settings, token: str | None = None) -> WebClient:
    """A WebClient at TUNEBOT_SLACK_API_URL that waits out 429s and retries 5xx with backoff."""
    tok = token or (settings.slack_bot_token.get_secret_value() if settings.slack_bot_token
                    else None)
    client = WebClient(token=tok, base_url=settings.slack_api_url, timeout=30)
    client.retry_handlers.extend([
        RateLimitErrorRetryHandler(max_retry_count=5),
        ServerErrorRetryHandler(max_retry_count=4),
        ConnectionErrorRetryHandler(max_retry_count=3),
    ])
    return client


class ChannelPacer:
    """At most `rate` posts per second per channel, across the threads of this process."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, channel: str) -> None:
        """Sleep until this channel may take another post."""
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next.get(channel, 0.0))
            self._next[channel] = at + self.interval
        if at > now:
            time.sleep(at - now)


_PACERS: dict[float, ChannelPacer] = {}


def pacer(settings: Settings) -> ChannelPacer:
    """The process-wide pacer for this rate."""
    rate = settings.slack_posts_per_second
    if rate not in _PACERS:
        _PACERS[rate] = ChannelPacer(rate)
    return _PACERS[rate]


def deliver_pending(settings: Settings, engine: Engine, job_id: int,
                    client: WebClient | None = None) -> int:
    """Deliver the job's undelivered events in order; returns how many were delivered.

    Raises on a Slack failure that outlasted the client's retries, so the task retries later;
    what was not delivered stays in SQL.
    """
    if client is None:
        job = jobs.get(engine=engine, job_id=job_id)
        token = bot_token_for(settings, engine, job.team_id) if job is not None else None
        if token is None:
            log.info("no bot token for job %s's workspace: its events stay in SQL", job_id)
            return 0
        client = make_client(settings, token=token)
    owner = f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"
    if not events.claim_delivery(engine=engine, job_id=job_id, owner=owner,
                                 seconds=CLAIM_SECONDS):
        return 0  # another deliverer is on it; it will pick up our events too
    delivered = 0
    try:
        while True:
            job, ev = events.next_undelivered(engine=engine, job_id=job_id)
            if job is None or ev is None or not job.channel:
                return delivered
            slack_ts = _deliver_one(settings, engine, client, job, ev)
            assert ev.id is not None
            events.mark_delivered(engine=engine, event_id=ev.id, slack_ts=slack_ts)
            delivered += 1
            if ev.kind == "final":  # the requester's Home tab shows the new result
                refresh_home_quietly(client, engine, job.team_id, job.requested_by)
    finally:
        events.release_delivery(engine=engine, job_id=job_id, owner=owner)


def _deliver_one(settings: Settings, engine: Engine, client: WebClient, job: Job,
                 ev: JobEvent) -> str | None:
    reply = Reply.from_dict(ev.payload)
    channel = job.channel
    assert channel is not None
    assert job.id is not None
    wait = pacer(settings).wait
    try:
        if ev.kind in ("status", "final") or job.status_ts is None:
            # The status message offers "Cancel job" until the job ends.
            cancel = [] if ev.kind == "final" else [cancel_button(job.id)]
            ts = _update_root(client, engine, job, reply if ev.kind != "reply" else
                              Reply(text=job.title or f"job #{job.id}"), wait, cancel)
            if ev.kind == "status":
                return ts
        if ev.kind == "final":
            follow_ups = buttons_for(job.kind, job.status, job.params or {}, job.id)
            if follow_ups:
                reply = Reply(text=reply.text, blocks=[*(reply.blocks or [section(reply.text)]),
                                                       actions(follow_ups)])
        wait(channel)
        resp = client.chat_postMessage(channel=channel, thread_ts=job.thread_ts,
                                       text=fallback_text(reply), blocks=reply_blocks(reply),
                                       unfurl_links=False, unfurl_media=False)
        for img in images(reply):
            path = Path(img["path"])
            if path.is_file():
                wait(channel)
                client.files_upload_v2(channel=channel, thread_ts=job.thread_ts, file=str(path),
                                       filename=path.name, title=img.get("title", path.name))
        return str(resp.get("ts"))
    except SlackApiError as exc:
        log.warning("slack refused an event of job %s: %s", job.id, exc.response.get("error"))
        raise


def _update_root(client: WebClient, engine: Engine, job: Job, reply: Reply,
                 wait: Callable[[str], None], buttons: list[dict[str, str]]) -> str:
    """Post the job's root status message once, then keep it current with chat.update."""
    line = Reply(text=reply.status or reply.text)
    text = fallback_text(line)
    blocks = reply_blocks(Reply(text=line.text, blocks=[section(line.text)]
                                + ([actions(buttons)] if buttons else [])))
    assert job.channel is not None
    wait(job.channel)
    if job.status_ts is None:
        resp = client.chat_postMessage(channel=job.channel, thread_ts=job.thread_ts, text=text,
                                       blocks=blocks, unfurl_links=False)
        job.status_ts = str(resp["ts"])
        if job.thread_ts is None:
            job.thread_ts = job.status_ts  # a slash command's job threads under its root
        assert job.id is not None
        events.record_status_message(engine=engine, job_id=job.id, status_ts=job.status_ts,
                                     thread_ts=job.thread_ts)
        return job.status_ts
    client.chat_update(channel=job.channel, ts=job.status_ts, text=text, blocks=blocks)
    return job.status_ts
