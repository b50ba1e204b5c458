"""Duplicates: job-creating requests through the real HTTP bot, 20% re-sent (slash bodies as a
client retry, events with Slack's X-Slack-Retry-Num) and 5% double-clicked Re-run buttons →
exactly one job per request, keyed as the Slack work defines (trigger_id, event_id, and
team/message/button/user while the job is active)."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from devtools.slack_api.payloads import (
    app_mention_event,
    block_actions_body,
    event_body,
    slash_command_body,
)
from tests.reliability.conftest import FULL, Report, size
from tests.reliability.stack import job_count, running_stack
from tunebot import catalog, datasets, jobs
from tunebot.buttons import RERUN
from tunebot.db import session_scope
from tunebot.models import Job

PROMPT = {
    "messages": [{"role": "user", "content": "colour: {{ colour }}"}],
    "variables": {"colour": "a colour name"},
    "output": {"format": "choice", "choices": ["warm", "cool"]},
}


@dataclass
class Request:
    """One user request and how it is (re)sent."""

    key: str  # the idempotency key the bot derives from it
    body: bytes
    kind: str  # slash | event | button
    resends: int


def _requests(n: int, users: int, channels: int, rng: random.Random,
              seed_job: int) -> list[Request]:
    out = []
    for i in range(n):
        user, channel = f"U{i % users:05d}", f"C{i % channels:04d}"
        if i % 20 == 19:  # 5%: a Re-run button under a job's message, clicked twice
            message_ts = f"1767225600.{i:06d}"
            body = block_actions_body(RERUN, str(seed_job), user_id=user, channel_id=channel,
                                      message={"type": "message", "ts": message_ts, "text": ""})
            out.append(Request(f"button:T0TEAM:{message_ts}:{RERUN}:{user}", body, "button", 1))
            continue
        text = "tunebot ping" if i % 3 else "prompt test colours on colours-eval model=smollm2"
        resends = (1 + (i % 2)) if rng.random() < 0.2 else 0
        if i % 2 == 0:
            trigger = f"{1767225600 + i}.1000000001.{i:032x}"
            body = slash_command_body(text, command="/tunebot", user_id=user, channel_id=channel,
                                      trigger_id=trigger)
            out.append(Request(f"slash:T0TEAM:{trigger}", body, "slash", resends))
        else:
            event_id = f"Ev{i:010d}"
            event = app_mention_event(f"<@U0BOT> {text}", user=user, channel=channel)
            out.append(Request(f"event:T0TEAM:{event_id}", event_body(event, event_id=event_id),
                               "event", resends))
    return out


def _seed(engine, settings, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        catalog.save_version(session=s, team_id="T0TEAM", name="colours", content=PROMPT,
                             author="U0ALICE", message="v1")
    data = tmp_path / "colours-eval.jsonl"
    data.write_text("".join(json.dumps({"colour": c, "expected": w}) + "\n"
                            for c, w in [("red", "warm"), ("blue", "cool")] * 4))
    datasets.add_dataset(engine=engine, settings=settings, team_id="T0TEAM",
                         name="colours-eval", path=data, user="U0ALICE")
    # The finished job whose Re-run button the clicks press.
    job = jobs.submit(engine=engine, waker=None, team_id="T0TEAM", kind="noop",
                      requested_by="U0ALICE", params={"seconds": 0}, title="🏓 ping",
                      channel="C0000", idempotency_key="seed").job
    return int(job.id)


def test_every_request_makes_exactly_one_job(tmp_path: Path, private_pg_url: str,
                                             fresh_redis, report: Report) -> None:
    n = size(100, 1000)
    rng = random.Random(11)
    with running_stack(tmp_path, database_url=private_pg_url,
                       broker_url=fresh_redis.url + "/0") as stack:
        seed = _seed(stack.core.engine, stack.settings, tmp_path)
        reqs = _requests(n, users=100, channels=20, rng=rng, seed_job=seed)
        # Each send is (request, retry number); a resend goes somewhere after its original
        # (a double click right after it), and with 8 senders it often races the original.
        sends = [(r, 0) for r in reqs]
        for r in reqs:
            for k in range(1, r.resends + 1):
                at = sends.index((r, k - 1)) + 1 if r.kind == "button" else \
                    rng.randint(reqs.index(r) + k, len(sends))
                sends.insert(at, (r, k))

        def send(item: tuple[Request, int]) -> tuple[Request, int, int, str]:
            r, k = item
            retry = k if (r.kind == "event" and k) else None
            resp = stack.post(r.body, retry_num=retry)
            return r, k, resp.status_code, resp.text

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, sends))
        sent_s = time.monotonic() - started
        # Event listeners run after the ack: wait for the count to settle.
        deadline = time.monotonic() + (120 if FULL else 60)
        while job_count(stack.core.engine) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        with Session(stack.core.engine) as s:
            rows = list(s.execute(select(Job.idempotency_key, Job.active_key)
                                  .where(Job.id != seed)).all())
    bad_status = [(r.key, k, code) for r, k, code, _ in results if code != 200]
    slash_resent = [text for r, k, _, text in results if r.kind == "slash" and k]
    keys = [idem or active for idem, active in rows]
    expected = {r.key for r in reqs}
    lost = expected - set(keys)
    dups = len(keys) - len(set(keys)) + len(set(keys) - expected)
    resent = sum(r.resends for r in reqs if r.kind != "button")
    clicks = sum(r.kind == "button" for r in reqs)
    report.add("1 duplicates", "job requests via the HTTP bot", n, held=n - len(lost),
               lost=len(lost), duplicated=dups,
               note=f"+{resent} re-sent copies, {clicks} buttons double-clicked; "
               f"{len(sends)} posts in {sent_s:.0f}s")
    assert not bad_status, bad_status[:5]
    assert resent >= n // 10 and clicks >= n // 20
    assert not lost, sorted(lost)[:5]
    assert dups == 0 and len(keys) == n
    # A re-sent slash body is told which job it already is, never queued again.
    assert all("already job #" in t or "Queued" in t for t in slash_resent), slash_resent[:3]
