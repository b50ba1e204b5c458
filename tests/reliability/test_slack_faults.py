"""Slack faults: the local Slack API answers 429 (with Retry-After) and then 500 for a while,
recording nothing → once it recovers, every thread message is delivered exactly once, in order."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import Session

from tests.reliability.conftest import FULL, Report, size
from tests.reliability.stack import all_jobs, reply_texts, running_stack
from tunebot.models import FINAL_STATUSES, JobEvent

METHODS = ["chat.postMessage", "chat.update"]


def _undelivered(engine) -> int:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return int(s.execute(select(func.count()).select_from(JobEvent)
                             .where(JobEvent.delivered_at.is_(None))).scalar_one())  # type: ignore[union-attr]


def test_every_thread_message_once_in_order_after_slack_faults(
        tmp_path: Path, private_pg_url: str, fresh_redis, start_worker,
        report: Report) -> None:
    n = size(4, 20)
    channels = [f"C0FAULT{k}" for k in range(2)]
    with running_stack(tmp_path, database_url=private_pg_url, broker_url=fresh_redis.url + "/0",
                       start_worker=start_worker, slack_posts_per_second=20.0,
                       worker_concurrency=2) as stack:
        slack = stack.slack
        slack.fail_next(size(4, 8), status=429, methods=METHODS, retry_after=1)
        if FULL:
            slack.fail_for(5.0, status=429, methods=METHODS, retry_after=1)
        for i in range(n):
            resp = stack.slash("ping seconds=0.5", channel_id=channels[i % 2],
                               user_id=f"U{i:04d}")
            assert resp.status_code == 200 and "Queued" in resp.text, resp.text
        time.sleep(5.0 if FULL else 2.0)
        # Then 500s: a burst longer than the client's own retries, and a stretch of them.
        slack.fail_next(6, status=500, methods=METHODS)  # the client itself retries 4 times
        if FULL:
            slack.fail_for(10.0, status=500, methods=METHODS)
        deadline = time.monotonic() + (240 if FULL else 120)
        while time.monotonic() < deadline:
            rows = all_jobs(stack.core.engine)
            if all(j.status in FINAL_STATUSES for j in rows) and \
                    _undelivered(stack.core.engine) == 0:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a late duplicate, if any, would land now
        rows = all_jobs(stack.core.engine)
        lost = duplicated = misordered = sent = 0
        for job in rows:
            expected = reply_texts(stack.core.engine, job.id)
            sent += len(expected)
            got = [m["text"] for m in slack.thread(job.channel, job.thread_ts or "")
                   if m.get("ts") != job.thread_ts]
            lost += sum(1 for t in expected if t not in got)
            duplicated += len(got) - len(set(got)) + sum(1 for t in set(got)
                                                          if t not in expected)
            if [t for t in got if t in expected] != expected:
                misordered += 1
            roots = [m for m in slack.messages(job.channel)
                     if m.get("ts") == job.status_ts]
            duplicated += max(0, len(roots) - 1)
            lost += 0 if roots else 1
        undelivered = _undelivered(stack.core.engine)
        refused = {code: sum(1 for r in slack.rejected if r.status == code) for code in (429, 500)}
    report.add("5 slack faults", f"thread messages of {n} jobs, 429 then 500 on post/update",
               sent, held=sent - lost, lost=lost, duplicated=duplicated,
               note=f"{refused[429]}×429 + {refused[500]}×500 served; {misordered} threads out "
               f"of order, {undelivered} undelivered")
    assert all(j.status == "succeeded" for j in rows), [(j.id, j.status, j.error) for j in rows]
    assert sent >= 6 * n and refused[429] >= size(4, 8) and refused[500] >= 6, refused
    assert lost == 0 and duplicated == 0 and misordered == 0 and undelivered == 0
