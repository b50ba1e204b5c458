"""The buttons on job messages, clicked as Slack sends block_actions: each does what its command
does, with the same permission checks; a double click starts one job."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import Session

from devtools.slack_api.payloads import block_actions_body
from tests.bot.conftest import Stack, running_stack
from tests.bot.test_session import CHANNEL, job_id_of, seed, thread_of
from tunebot import jobs
from tunebot.models import Job


def buttons(message: dict) -> dict[str, str]:
    """action_id → value of the buttons on a stored message."""
    return {e["action_id"]: e.get("value", "") for b in message.get("blocks") or []
            if b.get("type") == "actions" for e in b["elements"]}


def click(stack: Stack, message: dict, action_id: str, user: str = "U0ALICE") -> None:
    value = buttons(message)[action_id]
    resp = stack.post(block_actions_body(action_id, value, message=message, user_id=user))
    assert resp.status_code == 200, resp.text


def told(stack: Stack, user: str, n_before: int, timeout: float = 20) -> str:
    """The next ephemeral answer the user got."""
    got = stack.slack.wait_for(lambda: (e := stack.slack.ephemerals(CHANNEL, user))[n_before:]
                               and e[n_before:], timeout=timeout)
    return got[0]["text"]


def job_total(stack: Stack) -> int:
    with Session(stack.core.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def final_message(stack: Stack, job_id: int) -> dict:
    root, replies = thread_of(stack, job_id)
    return next(m for m in reversed(replies) if buttons(m))


def test_buttons_on_a_prompt_test(tmp_path: Path, start_worker, redis_url: str,
                                  tiny_model_dir: Path) -> None:
    # The production gate is off here: tests/tunebot/test_promotion_gate.py covers it.
    with running_stack(tmp_path, start_worker, redis_url, protected_labels=[]) as stack:
        seed(stack, tmp_path)
        stack.slash("label colours@1 production", command="/prompt")
        answer = stack.slash(f"test colours@2 on colours-eval model={tiny_model_dir}",
                             command="/prompt").json()
        test_id = job_id_of(answer)
        final = final_message(stack, test_id)
        assert set(buttons(final)) == {"prompt_promote", "prompt_compare_production",
                                       "job_rerun"}
        # The status message lost its Cancel button when the job ended.
        root, _ = thread_of(stack, test_id)
        assert "job_cancel" not in buttons(root)

        # Promote: the same rule as /prompt label … production — owner or admin.
        n = len(stack.slack.ephemerals(CHANNEL, "U0BOB"))
        click(stack, final, "prompt_promote", user="U0BOB")
        assert "owner (U0ALICE) or an admin" in told(stack, "U0BOB", n)
        n = len(stack.slack.ephemerals(CHANNEL, "U0ALICE"))
        click(stack, final, "prompt_promote")
        assert "colours:production → v2 (was v1)" in told(stack, "U0ALICE", n)

        # Compare with production: production is now this very version → a clear refusal.
        n = len(stack.slack.ephemerals(CHANNEL, "U0ALICE"))
        click(stack, final, "prompt_compare_production")
        assert "both references resolve to colours@2" in told(stack, "U0ALICE", n)
        stack.slash("label colours@1 production", command="/prompt")
        n = len(stack.slack.ephemerals(CHANNEL, "U0ALICE"))
        click(stack, final, "prompt_compare_production")
        said = told(stack, "U0ALICE", n)
        assert "Queued" in said, said
        cmp_job = jobs.get(engine=stack.core.engine, job_id=job_id_of({"text": said}))
        assert cmp_job.kind == "prompt_compare"
        assert [c["version"] for c in cmp_job.params["candidates"]] == [1, 2]
        root, replies = thread_of(stack, cmp_job.id)
        assert "succeeded" in root["text"]


def test_double_click_rerun_makes_one_job_and_cancel_stops_it(tmp_path: Path, start_worker,
                                                              redis_url: str) -> None:
    # The production gate is off here: tests/tunebot/test_promotion_gate.py covers it.
    with running_stack(tmp_path, start_worker, redis_url, protected_labels=[]) as stack:
        first = job_id_of(stack.slash("ping seconds=0.2").json())
        final = final_message(stack, first)
        assert set(buttons(final)) == {"job_rerun"}
        # Re-run with seconds=0.2 → a new job with the same parameters; a double click
        # (two deliveries racing) finds the job the first click made.
        clicks = [threading.Thread(target=click, args=(stack, final, "job_rerun"))
                  for _ in range(2)]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join()
        stack.slack.wait_for(lambda: job_total(stack) == 2 or None, timeout=15)
        time.sleep(1.0)
        assert job_total(stack) == 2
        second = jobs.get(engine=stack.core.engine, job_id=2)
        assert second.kind == "noop" and second.params == {"seconds": 0.2}
        thread_of(stack, 2)
        # After that job ended, the same button starts another.
        click(stack, final, "job_rerun")
        stack.slack.wait_for(lambda: job_total(stack) == 3 or None, timeout=15)

        # Cancel job, from a running job's status message.
        long = job_id_of(stack.slash("ping seconds=30").json())
        stack.slack.wait_for(lambda: jobs.get(engine=stack.core.engine,
                                              job_id=long).status == "running"
                             or None, timeout=30)
        root = stack.slack.wait_for(
            lambda: (j := jobs.get(engine=stack.core.engine, job_id=long)).status_ts and (
                m := stack.slack.message(CHANNEL, j.status_ts)) and "job_cancel" in buttons(m)
            and m, timeout=20)
        n = len(stack.slack.ephemerals(CHANNEL, "U0BOB"))
        click(stack, root, "job_cancel", user="U0BOB")  # not Bob's job
        assert "only job #" in told(stack, "U0BOB", n)
        click(stack, root, "job_cancel")
        root, _ = thread_of(stack, long, timeout=60)
        assert "cancelled" in root["text"] and "job_cancel" not in buttons(root)
