"""The notifier: posts job events to Slack threads, once each, in order, rate-limited, retried.

Slack's refusals are sorted into three kinds (`classify`): permanent ones (the bot left the
channel, the token was revoked, …) stop delivery for the job, recorded on its row and logged
once; transient ones (5xx, timeouts, connection errors) and rate limits are retried with a
capped exponential back-off, at most MAX_ATTEMPTS times in a row. One delivery chain per job at
a time: the chain keeps the job's claim (tunebot/jobs/events.py) through its back-off.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.web import SlackResponse
from sqlalchemy.engine import Engine

from bot.blocks import escape, fallback_text, images, reply_blocks
from bot.home import refresh_home_quietly
from bot.oauth import bot_token_for
from tunebot import jobs, telemetry, watches
from tunebot.buttons import buttons_for, cancel_button
from tunebot.jobs import events
from tunebot.models import Job, JobEvent, utcnow
from tunebot.replies import Reply, actions, section
from tunebot.settings import Settings

log = logging.getLogger(__name__)
CLAIM_SECONDS = 120
# Transient failures: retried after 2, 4, 8 … seconds, at most 10 minutes apart, 16 times in a
# row (about an hour and a half of Slack trouble) before the job's delivery is given up.
BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
MAX_ATTEMPTS = 16
CLAIM_GRACE = 60.0  # after a back-off's retry time, how long before the reconciler steps in

# Slack's answers that no retry can change: the bot's access to the channel, message or
# workspace is gone, or the request itself is refused as built.
PERMANENT = frozenset({
    "not_in_channel", "channel_not_found", "is_archived", "channel_is_archived",
    "message_not_found", "cant_update_message", "edit_window_closed", "thread_not_found",
    "cannot_reply_to_message", "invalid_auth", "not_authed", "account_inactive",
    "token_revoked", "token_expired", "no_permission", "missing_scope",
    "not_allowed_token_type", "team_access_not_granted", "access_denied", "org_login_required",
    "ekm_access_denied", "enterprise_is_restricted", "two_factor_setup_required",
    "restricted_action", "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel", "restricted_action_non_threadable_channel",
    "team_not_found", "user_not_found", "method_deprecated", "deprecated_endpoint",
    "unknown_method", "invalid_blocks", "invalid_blocks_format", "msg_too_long", "no_text",
    "too_many_attachments", "invalid_attachments", "invalid_arguments", "invalid_array_arg",
    "invalid_charset", "invalid_form_data", "invalid_post_type", "missing_post_type",
    "invalid_metadata_format", "invalid_metadata_schema", "metadata_too_large",
    "as_user_not_supported", "slack_connect_file_link_sharing_blocked", "no_bot_token",
})
# What Slack says about the request as built (blocks, length): a plain-text version may pass.
CONTENT = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long",
                     "too_many_attachments", "invalid_attachments"})
TRANSIENT = frozenset({"internal_error", "fatal_error", "service_unavailable",
                       "request_timeout", "timeout"})
RATE_LIMITED = frozenset({"ratelimited", "rate_limited"})


@dataclass(frozen=True)
class SlackFailure:
    """A failed Slack call, sorted: `permanent`, `transient` or `rate_limited`."""

    kind: str
    error: str  # Slack's error code, or the exception's class for a network failure
    retry_after: float | None = None  # Slack's Retry-After, for rate limits


def _header(headers: object, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if str(key).lower() == name:
            return str(value[0] if isinstance(value, list | tuple) and value else value)
    return None


def error_code(exc: BaseException) -> str | None:
    """Slack's error code of a refused call (None for anything else)."""
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or f"http_{exc.response.status_code}")
    return None


def classify(exc: BaseException) -> SlackFailure:
    """Permanent, transient or rate-limited: what a failed Slack call deserves next.

    An error code this table does not know is retried like a transient one: bounded by
    MAX_ATTEMPTS, so a new permanent code costs a few calls, never a storm.
    """
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        code = error_code(exc) or "unknown_error"
        if status == 429 or code in RATE_LIMITED:
            raw = _header(exc.response.headers, "retry-after")
            try:
                wait = max(1.0, float(raw)) if raw is not None else 1.0
            except ValueError:
                wait = 1.0
            return SlackFailure("rate_limited", "ratelimited", wait)
        if status >= 500 or code in TRANSIENT:
            return SlackFailure("transient", code)
        if code in PERMANENT:
            return SlackFailure("permanent", code)
        return SlackFailure("transient", code)
    # Timeouts, refused connections, a proxy's garbage: the network, retried (bounded).
    return SlackFailure("transient", exc.__class__.__name__)


def backoff(attempt: int, failure: SlackFailure | None = None) -> float:
    """Seconds before retry `attempt` (1-based): doubling from BACKOFF_BASE up to BACKOFF_CAP,
    and never sooner than a rate limit's Retry-After."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(max(attempt - 1, 0), 20))
    if failure is not None and failure.retry_after is not None:
        delay = max(delay, min(failure.retry_after, BACKOFF_CAP))
    return delay


@dataclass
class Delivery:
    """What one delivery run did: events delivered, and then either done, a retry in
    `retry_in` seconds (the chain keeps the claim), or delivery stopped with `failed`."""

    delivered: int = 0
    retry_in: float | None = None
    failed: str | None = None


class MeteredWebClient(WebClient):
    """A WebClient that counts its calls, failures and time per Web API method
    (tunebot_slack_api_*): every method goes through api_call."""

    def api_call(self, api_method: str, **kwargs: Any) -> SlackResponse:
        """The Web API call, measured."""
        method = api_method if METHOD.fullmatch(api_method) else "other"
        telemetry.SLACK_CALLS.labels(method).inc()
        started = time.monotonic()
        try:
            return super().api_call(api_method, **kwargs)
        except Exception as exc:
            telemetry.SLACK_ERRORS.labels(method, classify(exc).kind).inc()
            raise
        finally:
            telemetry.SLACK_SECONDS.labels(method).observe(time.monotonic() - started)

    @classmethod
    def like(cls, client: WebClient) -> MeteredWebClient:
        """A metered client with `client`'s token, address and retry handlers (Bolt builds a
        plain WebClient for each request)."""
        return cls(token=client.token, base_url=client.base_url, timeout=client.timeout,
                   ssl=client.ssl, proxy=client.proxy, headers=client.headers,
                   team_id=client.default_params.get("team_id"), logger=client.logger,
                   retry_handlers=list(client.retry_handlers or []))


# Web API method names (chat.postMessage, files.getUploadURLExternal): anything else is
# counted as "other", so a label never takes an unbounded value.
METHOD = re.compile(r"[a-z][A-Za-z]{0,30}(\.[A-Za-z]{1,40}){1,3}")


def make_client(settings: Settings, token: str | None = None) -> WebClient:
    """A WebClient at TUNEBOT_SLACK_API_URL that waits out 429s and retries 5xx with backoff."""
    tok = token or (settings.slack_bot_token.get_secret_value() if settings.slack_bot_token
                    else None)
    client = MeteredWebClient(token=tok, base_url=settings.slack_api_url, timeout=30)
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
                    client: WebClient | None = None, owner: str | None = None) -> Delivery:
    """Deliver the job's undelivered events in order, as the job's one deliverer.

    `owner` names the delivery chain (the notify task keeps it across its retries, so only it
    resumes after a back-off). A Slack failure is classified: permanent stops the job's
    delivery (recorded and logged once); otherwise the result asks for a retry later, until
    MAX_ATTEMPTS failures in a row. What was not delivered stays in SQL.
    """
    owner = owner or f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"
    if not events.claim_delivery(engine=engine, job_id=job_id, owner=owner,
                                 seconds=CLAIM_SECONDS):
        # Another deliverer is on it (or waiting out a back-off; it will pick up our events
        # too), or this job's delivery failed for good.
        return Delivery()
    out = Delivery()
    job: Job | None = None
    try:
        job = jobs.get(engine=engine, job_id=job_id)
        if job is None or not job.channel:  # nothing of it goes to Slack (a CLI job)
            events.release_delivery(engine=engine, job_id=job_id, owner=owner)
            return out
        if client is None:
            token = bot_token_for(settings, engine, job.team_id)
            if token is None:
                _stop(engine, job_id, "no_bot_token: tunebot is not installed in this "
                      "workspace any more")
                out.failed = "no_bot_token"
                return out
            client = make_client(settings, token=token)
        while True:
            job, ev = events.next_undelivered(engine=engine, job_id=job_id)
            if job is None or ev is None or not job.channel:
                events.release_delivery(engine=engine, job_id=job_id, owner=owner)
                return out
            assert ev.id is not None
            if watches.is_held_back(params=job.params, event_kind=ev.kind,
                                    error=bool(ev.payload.get("error"))):
                # A watch run's progress and quiet outcome stay in SQL: only alerts post.
                events.mark_delivered(engine=engine, event_id=ev.id, slack_ts=None)
                continue
            slack_ts = _deliver_one(settings, engine, client, job, ev)
            events.mark_delivered(engine=engine, event_id=ev.id, slack_ts=slack_ts)
            out.delivered += 1
            _measure_lag(ev)
            if ev.kind == "final":  # the requester's Home tab shows the new result
                refresh_home_quietly(client, engine, job.team_id, job.requested_by)
    except Exception as exc:
        failure = classify(exc)
        telemetry.DELIVERY_FAILURES.labels(failure.kind).inc()
        previous = 0 if out.delivered or job is None else job.delivery_attempts
        attempts = previous + 1  # failures in a row: progress in this run starts over
        if failure.kind == "permanent":
            _stop(engine, job_id, failure.error)
            out.failed = failure.error
            if job is not None and client is not None:
                _pause_watch(client, engine, job, failure.error)
        elif attempts >= MAX_ATTEMPTS:
            _stop(engine, job_id, f"gave up after {attempts} attempts: {failure.error}")
            out.failed = failure.error
        else:
            delay = backoff(attempts, failure)
            kept = events.delivery_retry_later(
                engine=engine, job_id=job_id, owner=owner, attempts=attempts,
                error=failure.error, retry_at=utcnow() + timedelta(seconds=delay),
                grace=CLAIM_GRACE)
            # Logged on the first failure of a run of them, then quietly until it ends.
            (log.warning if attempts == 1 else log.info)(
                "slack delivery of job %s failed (%s, %s); retry %d/%d in %.0f s", job_id,
                failure.kind, failure.error, attempts, MAX_ATTEMPTS - 1, delay)
            if kept:
                out.retry_in = delay
        return out


EVENT_KINDS = frozenset({"status", "reply", "final", "alert"})


def _measure_lag(ev: JobEvent) -> None:
    """How long the event waited for Slack (tunebot_delivery_lag_seconds)."""
    created = ev.created_at if ev.created_at.tzinfo else ev.created_at.replace(tzinfo=UTC)
    lag = (utcnow() - created).total_seconds()
    telemetry.DELIVERY_LAG.labels(telemetry.bounded(ev.kind, EVENT_KINDS)).observe(max(lag, 0))


def _pause_watch(client: WebClient, engine: Engine, job: Job, error: str) -> None:
    """A watch whose channel refuses us for good pauses, and its owner hears why by DM."""
    watch_id = (job.params or {}).get("watch_id")
    if job.kind != watches.KIND or not isinstance(watch_id, int):
        return
    watch = watches.pause_watch(engine=engine, watch_id=watch_id,
                                note=f"Slack refused channel {job.channel}: {error}")
    if watch is None:
        return  # already paused (or stopped): the owner was told
    log.warning("watch %s paused: Slack refused its channel %s (%s)", watch_id, job.channel,
                error)
    text = (f"⏸ Your watch #{watch_id} ({watch.prompt_ref} on {watch.dataset}) is paused: "
            f"Slack refused its channel {job.channel} ({error}), so its alerts cannot be "
            f"posted there. Invite tunebot to the channel (or pick another) and run the same "
            f"/watch command again to resume it, or /watch stop {watch_id}.")
    try:
        client.chat_postMessage(channel=watch.owner, text=escape(text))
    except Exception as exc:
        log.info("could not tell %s that watch %s paused: %s", watch.owner, watch_id,
                 classify(exc).error)


def _stop(engine: Engine, job_id: int, error: str) -> None:
    if events.delivery_failed(engine=engine, job_id=job_id, error=error):
        log.warning("slack delivery of job %s stopped for good: %s (its events stay in SQL; "
                    "`tunebot jobs` shows it)", job_id, error)


def _deliver_one(settings: Settings, engine: Engine, client: WebClient, job: Job,
                 ev: JobEvent) -> str | None:
    reply = Reply.from_dict(ev.payload)
    channel = job.channel
    assert channel is not None
    assert job.id is not None
    wait = pacer(settings).wait
    if ev.kind in ("status", "final") or job.status_ts is None:
        # The status message offers "Cancel job" until the job ends (an alert is no status).
        cancel = [] if ev.kind in ("final", "alert") else [cancel_button(job.id)]
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
    text = fallback_text(reply)
    try:
        resp = client.chat_postMessage(channel=channel, thread_ts=job.thread_ts, text=text,
                                       blocks=reply_blocks(reply), unfurl_links=False,
                                       unfurl_media=False)
    except SlackApiError as exc:
        code = error_code(exc)
        if code not in CONTENT:
            raise
        # Slack refused the message as built: the plain text still says what happened.
        log.warning("slack refused job %s's event %s as built (%s); posting it as text",
                    job.id, ev.seq, code)
        wait(channel)
        resp = client.chat_postMessage(
            channel=channel, thread_ts=job.thread_ts, unfurl_links=False, unfurl_media=False,
            text=text + f"\n_(the formatted version was refused by Slack: {code})_")
    for img in images(reply):
        path = Path(img["path"])
        if path.is_file():
            wait(channel)
            try:
                client.files_upload_v2(channel=channel, thread_ts=job.thread_ts,
                                       file=str(path), filename=path.name,
                                       title=img.get("title", path.name))
            except Exception as exc:
                # The message is posted: retrying the event would post it twice. Say so.
                failure = classify(exc)
                log.warning("could not upload %s for job %s: %s", path.name, job.id,
                            failure.error)
                _note_quietly(client, channel, job.thread_ts,
                              f"(could not upload {img.get('title', path.name)}: "
                              f"{failure.error})")
    return str(resp.get("ts"))


def _note_quietly(client: WebClient, channel: str, thread_ts: str | None, text: str) -> None:
    try:
        client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=escape(text))
    except Exception as exc:
        log.info("could not post a note in %s: %s", channel, classify(exc).error)


def _update_root(client: WebClient, engine: Engine, job: Job, reply: Reply,
                 wait: Callable[[str], None], buttons: list[dict[str, str]]) -> str:
    """Post the job's root status message once, then keep it current with chat.update; a
    status message someone deleted is posted anew (never updated forever)."""
    line = Reply(text=reply.status or reply.text)
    text = fallback_text(line)
    blocks = reply_blocks(Reply(text=line.text, blocks=[section(line.text)]
                                + ([actions(buttons)] if buttons else [])))
    assert job.channel is not None
    wait(job.channel)
    if job.status_ts is not None:
        try:
            client.chat_update(channel=job.channel, ts=job.status_ts, text=text, blocks=blocks)
            return job.status_ts
        except SlackApiError as exc:
            if error_code(exc) != "message_not_found":
                raise
            log.info("job %s's status message %s was deleted: posting a new one", job.id,
                     job.status_ts)
            if job.thread_ts == job.status_ts:
                job.thread_ts = None  # it was the thread's root: the new one starts a thread
            job.status_ts = None
            wait(job.channel)
    resp = client.chat_postMessage(channel=job.channel, thread_ts=job.thread_ts, text=text,
                                   blocks=blocks, unfurl_links=False)
    job.status_ts = str(resp["ts"])
    if job.thread_ts is None:
        job.thread_ts = job.status_ts  # a slash command's job threads under its root
    assert job.id is not None
    events.record_status_message(engine=engine, job_id=job.id, status_ts=job.status_ts,
                                 thread_ts=job.thread_ts)
    return job.status_ts
