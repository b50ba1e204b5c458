"""Who may do what from Slack: per-user quota, TUNEBOT_FINETUNE_ALLOWED (users and usergroups),
and no token or secret in any log line of the bot or the worker."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from devtools.slack_api.payloads import (
    app_mention_event,
    event_body,
    signed_headers,
    slash_command_body,
)
from devtools.slack_api.server import SlackAPIServer
from tests.bot.conftest import BOT_TOKEN, SECRET, free_port, running_stack
from tests.bot.test_session import said
from tests.conftest import REPO, settings_env
from tunebot import jobs, migrate
from tunebot.logs import TokenFilter


def test_quota_refuses_the_extra_job_naming_the_active_ones(tmp_path: Path, start_worker,
                                                              redis_url: str) -> None:
    # Only the io queue is served: pings stay queued, so the quota is what is tested.
    with running_stack(tmp_path, start_worker, redis_url, queues="io",
                       max_jobs_per_user=2) as stack:
        first = stack.slash("ping", user_id="U0BOB").json()
        second = stack.slash("ping", user_id="U0BOB").json()
        assert "Queued" in first["text"] and "Queued" in second["text"]
        third = stack.slash("ping", user_id="U0BOB").json()
        assert third["response_type"] == "ephemeral"
        assert "you already have 2 queued or running jobs (#1, #2; the limit is 2)" in \
            said(third)
        # Someone else is not affected; cancelling one of Bob's frees a slot for him.
        assert "Queued" in stack.slash("ping", user_id="U0CAROL").json()["text"]
        assert "Job #1 cancelled." in said(stack.slash("cancel 1", user_id="U0BOB").json())
        assert jobs.get(engine=stack.core.engine, job_id=1).status == "cancelled"
        # The cancelled job's root message says so (it never ran, the notifier still told).
        stack.slack.wait_for(lambda: any(m.get("text", "").startswith("⏹ 🏓 ping · #1 · cancelled")
                                         for m in stack.slack.messages("C0CHANNEL")) or None,
                             timeout=20)
        assert "Queued" in stack.slash("ping", user_id="U0BOB").json()["text"]


def test_finetune_allowed_by_user_id_or_usergroup(tmp_path: Path, start_worker,
                                                  redis_url: str) -> None:
    with running_stack(tmp_path, start_worker, redis_url, queues="io",
                       finetune_allowed=["U0CAROL", "S0TUNERS"]) as stack:
        stack.slack.usergroups["S0TUNERS"] = ["U0DAVE"]
        text = "start smollm2 on nope-train"

        def answer(user: str) -> str:
            return said(stack.slash(text, command="/finetune", user_id=user).json())

        assert "fine-tuning is limited to the people in TUNEBOT_FINETUNE_ALLOWED" in \
            answer("U0BOB")
        # Carol by id, Dave through the usergroup, the admin always: the policy lets them by,
        # and the command then fails on its own merits (there is no such dataset).
        for user in ("U0CAROL", "U0DAVE", "U0ADMIN"):
            said_ = answer(user)
            assert "limited" not in said_ and "nope-train" in said_, (user, said_)
        looked_up = [c.args.get("usergroup") for c in stack.slack.calls_for(
            "usergroups.users.list")]
        assert looked_up == ["S0TUNERS"]  # Bob's miss and Dave's hit share one cached lookup
        # Read-only fine-tune commands stay open to everyone.
        assert "limited" not in said(stack.slash("list", command="/finetune",
                                                 user_id="U0BOB").json())


def test_token_filter_masks_secrets_in_arguments_and_messages() -> None:
    filt = TokenFilter([BOT_TOKEN, SECRET])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "calling with %s and %r",
                               (BOT_TOKEN, {"secret": SECRET}), None)
    assert filt.filter(record)
    assert BOT_TOKEN not in record.getMessage() and SECRET not in record.getMessage()
    assert record.getMessage().startswith("calling with *** and ")


def test_no_token_or_secret_in_debug_logs_of_bot_and_worker(tmp_path: Path, start_worker,
                                                            redis_url: str) -> None:
    from tests.conftest import make_settings

    with SlackAPIServer(bot_token=BOT_TOKEN, app_token="xapp-test",
                        signing_secret=SECRET) as slack:
        settings = make_settings(tmp_path, broker_url=redis_url, slack_api_url=slack.api_url,
                                 slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET,
                                 slack_posts_per_second=20.0, log_level="DEBUG")
        migrate.upgrade(settings.database_url)
        worker = start_worker(settings)
        port = free_port()
        env = settings_env(settings) | {"TUNEBOT_LOG_LEVEL": "DEBUG",
                                        "SLACK_SIGNING_SECRET": SECRET}
        log_path = tmp_path / "bot.log"
        with open(log_path, "wb") as log:
            bot = subprocess.Popen([sys.executable, "-m", "tunebot.cli", "bot", "--http",
                                    "--port", str(port)], env=env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/slack/events"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and bot.poll() is None, \
                        log_path.read_text()
                    time.sleep(0.2)
            body = slash_command_body("ping", command="/tunebot")
            assert httpx.post(url, content=body, headers=signed_headers(body, SECRET)) \
                .status_code == 200
            forged = httpx.post(url, content=body, headers=signed_headers(body, "wrong"))
            assert forged.status_code == 401
            mention = event_body(app_mention_event("<@U0BOT> tunebot bogus"))
            assert httpx.post(url, content=mention,
                              headers=signed_headers(mention, SECRET)).status_code == 200
            slack.wait_for(lambda: any("pong" in m.get("text", "")
                                       for m in slack.messages("C0CHANNEL")
                                       + [m for r in slack.messages("C0CHANNEL")
                                          for m in slack.thread("C0CHANNEL", r["ts"])]) or None,
                           timeout=60)
        finally:
            bot.terminate()
            bot.wait(timeout=15)
        logs = log_path.read_text() + worker.log()
        # The logs are verbose enough to have shown a token had one leaked…
        assert "chat.postMessage" in logs and "DEBUG" in logs
        # …and none did.
        assert BOT_TOKEN not in logs and SECRET not in logs
