"""Slash commands and mentions → jobs → thread replies, against the local Slack Web API."""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select
from sqlmodel import Session

from devtools.slack_api.payloads import app_mention_event, event_body, slash_command_body
from tests.bot.conftest import SECRET, Stack
from tunebot.models import Job


def job_count(stack: Stack) -> int:
    with Session(stack.core.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def wait_root_final(stack: Stack, channel: str = "C0CHANNEL", timeout: float = 45,
                    thread: str | None = None) -> dict:
    def final_root():  # type: ignore[no-untyped-def]
        roots = [m for m in stack.slack.messages(channel) if m.get("thread_ts") == thread
                 or (thread is None and m.get("thread_ts") == m.get("ts"))]
        done = [m for m in roots if "succeeded" in m.get("text", "") or "failed" in
                m.get("text", "")]
        return done[0] if done else None
    return stack.slack.wait_for(final_root, timeout=timeout)


def test_slash_command_runs_a_job_that_answers_in_its_thread(stack: Stack) -> None:
    resp = stack.slash("ping seconds=0.5")
    assert resp.status_code == 200
    ack = resp.json()
    assert ack["response_type"] == "ephemeral" and "Queued" in ack["text"]
    root = wait_root_final(stack)
    assert root["text"].startswith("✅ 🏓 ping · #1 · succeeded")
    assert len(stack.slack.calls_for("chat.update")) >= 2  # queued → running → … → succeeded
    stack.slack.wait_for(lambda: any("pong" in m.get("text", "") for m in
                                     stack.slack.thread("C0CHANNEL", root["ts"])), timeout=20)
    thread = [m["text"] for m in stack.slack.thread("C0CHANNEL", root["ts"])]
    assert any(t.startswith("Started on worker") for t in thread)
    assert len(thread) == len(set(thread))  # each event posted once


def test_resent_slash_body_maps_to_one_job(stack: Stack) -> None:
    body = slash_command_body("ping", command="/tunebot", trigger_id="111.222.abc")
    first = stack.post(body).json()
    again = stack.post(body).json()
    assert "Queued" in first["text"] and "already job #1" in again["text"]
    assert job_count(stack) == 1


def test_retried_mention_event_maps_to_one_job(stack: Stack) -> None:
    event = app_mention_event("<@U0BOT> tunebot ping", thread_ts="1767225600.000100")
    body = event_body(event, event_id="Ev0RETRY01")
    assert stack.post(body).status_code == 200
    assert stack.post(body, retry_num=1).status_code == 200
    assert stack.post(body, retry_num=2).status_code == 200
    stack.slack.wait_for(lambda: job_count(stack) == 1 or None, timeout=10)
    time.sleep(0.5)
    assert job_count(stack) == 1
    # The job's status message and replies live in the thread the bot was mentioned in.
    root = wait_root_final(stack, thread="1767225600.000100")
    assert root["text"].startswith("✅ 🏓 ping")


def test_forged_stale_and_missing_signatures_are_rejected(stack: Stack) -> None:
    body = slash_command_body("ping", command="/tunebot")
    assert stack.post(body, secret="wrong-secret").status_code == 401
    assert stack.post(body, timestamp=int(time.time()) - 6 * 60).status_code == 401
    import httpx

    bare = httpx.post(stack.bot.url, content=body,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bare.status_code == 401
    assert job_count(stack) == 0


def test_rate_limited_slack_still_gets_every_message_once_in_order(stack: Stack) -> None:
    stack.slack.fail_next(4, status=429, methods=["chat.postMessage", "chat.update"])
    stack.slash("ping seconds=1")
    root = wait_root_final(stack, timeout=60)
    stack.slack.wait_for(lambda: any("pong" in m.get("text", "") for m in
                                     stack.slack.thread("C0CHANNEL", root["ts"])), timeout=30)
    thread = [m["text"] for m in stack.slack.thread("C0CHANNEL", root["ts"])]
    assert len(thread) == len(set(thread))
    started = next(i for i, t in enumerate(thread) if t.startswith("Started"))
    pong = next(i for i, t in enumerate(thread) if "pong" in t)
    assert started < pong


def test_user_text_cannot_ping_channel_or_inject_links(stack: Stack) -> None:
    resp = stack.slash("prompt show <!channel>", command="/tunebot")
    text = json.dumps(resp.json())
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    resp = stack.slash("prompt show <https://evil.example|click>", command="/tunebot")
    assert "<https://evil" not in json.dumps(resp.json())


def test_usage_errors_answer_ephemerally_with_the_usage_line(stack: Stack) -> None:
    ack = stack.slash("test sentiment on", command="/prompt").json()
    assert ack["response_type"] == "ephemeral"
    assert "Usage: /prompt test REF on DATASET" in ack["text"]


def test_url_verification_is_answered(stack: Stack) -> None:
    body = json.dumps({"token": "x", "challenge": "abc123", "type": "url_verification"}).encode()
    resp = stack.post(body)
    assert resp.status_code == 200 and resp.json()["challenge"] == "abc123"


def test_signed_secret_is_the_one_the_bot_uses() -> None:
    assert SECRET  # keeps the constant referenced for readers of this module


def test_a_slash_command_is_parsed_once_on_its_way_in(stack: Stack, monkeypatch) -> None:
    """HTTP mode: routing parses the text and the listener takes that command as it is."""
    import bot.listeners.commands as listener

    def second_parse(*_: object, **__: object) -> None:
        raise AssertionError("the listener parsed the command again")

    monkeypatch.setattr(listener, "parse", second_parse)
    ack = stack.slash("ping seconds=0.2").json()
    assert "Queued" in ack["text"], ack
    wait_root_final(stack)


def test_slash_commands_take_the_ordered_lane_and_the_rest_the_pool() -> None:
    from bot.app import lane
    from devtools.slack_api.payloads import block_actions_body

    form, js = "application/x-www-form-urlencoded", "application/json"
    assert lane(slash_command_body("test sentiment on sentiment-eval"), form) == "commands"
    assert lane(slash_command_body("ping", command="/tunebot"), form) == "commands"
    assert lane(slash_command_body("label sentiment@2 production"), form) == "commands"
    # Commands that open a form wait on Slack's views.open, read as the listener reads them.
    for text, command in (("new", "/prompt"), ("edit sentiment", "/prompt"),
                          ("New x", "/prompt"), ('"new"', "/prompt"),
                          ("prompt edit sentiment", "/tunebot"), ("/prompt new", "/tunebot")):
        assert lane(slash_command_body(text, command=command), form) == "other", (text, command)
    # Fine-tune policy may look usergroups up in Slack; usage errors answer at once anyway.
    assert lane(slash_command_body("start smollm2 on x", command="/finetune"), form) == "other"
    assert lane(slash_command_body("frobnicate"), form) == "other"
    assert lane(event_body(app_mention_event("<@UBOT> ping &command=/prompt")), js) == "other"
    assert lane(block_actions_body("rerun", "12"), form) == "other"
    # Unreadable or hostile bodies never raise: Bolt verifies and answers them.
    assert lane(b"command=%2Fprompt&text=ping" + b"&x=1" * 80, form) == "other"
    assert lane(b"command=%2Fprompt&text=%22unterminated", form) == "other"
    assert lane(b"\xff\xfe command=", form) == "other"
