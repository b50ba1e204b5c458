"""A watch run's thread in Slack: quiet runs post nothing, an alert posts once (its line in the
channel, the details in its thread), and a channel that refuses us for good pauses the watch
and tells its owner by DM."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bot.notifier import deliver_pending, make_client
from devtools.seed import seed_colours
from devtools.slack_api.payloads import app_mention_event, event_body
from devtools.slack_api.server import SlackAPIServer
from tests.bot.conftest import running_stack
from tests.conftest import make_settings
from tunebot import jobs, migrate, watches
from tunebot.db import make_engine
from tunebot.models import utcnow
from tunebot.replies import Reply, section

TOKEN = "xoxb-watch"


def _run_job(engine, settings, channel: str) -> int:  # type: ignore[no-untyped-def]
    made = watches.create_watch(
        engine=engine, team_id="T0TEAM", owner="U0ALICE", prompt_ref="colours:production",
        prompt_name="colours", dataset="colours-eval", model=None, channel=channel,
        interval_seconds=3600, max_watches=10, now=utcnow() - timedelta(seconds=1))
    assert watches.tick(engine=engine, waker=None, settings=settings)
    watch = watches.get_watch(engine=engine, watch_id=made.watch.id or 0)
    assert watch is not None and watch.last_job_id is not None
    return watch.last_job_id


def _chatter(engine, job_id: int) -> None:  # type: ignore[no-untyped-def]
    """What every run says on its way: its status, a progress line and a message."""
    jobs.emit(engine=engine, job_id=job_id, kind="status",
              reply=Reply(text="running", status="👁 Watch #1 · running"))
    jobs.emit(engine=engine, job_id=job_id, reply=Reply(text="12/24 done", status="50%"))
    jobs.emit(engine=engine, job_id=job_id, reply=Reply(text="colours@2: 100.0% — quiet."))


def test_quiet_runs_post_nothing_and_an_alert_posts_once(tmp_path: Path) -> None:
    with SlackAPIServer(bot_token=TOKEN) as slack:
        settings = make_settings(tmp_path, slack_api_url=slack.api_url, slack_bot_token=TOKEN,
                                 slack_posts_per_second=50.0)
        migrate.upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        client = make_client(settings)
        slack.add_channel("C0ALERTS", "alerts")
        job_id = _run_job(engine, settings, "C0ALERTS")
        _chatter(engine, job_id)
        jobs.emit(engine=engine, job_id=job_id, kind="final",
                  reply=Reply(text="✅ done", status="✅ done"))
        deliver_pending(settings, engine, job_id, client)
        assert slack.messages("C0ALERTS") == []
        assert all(e.delivered_at is not None
                   for e in jobs.read_events(engine=engine, job_id=job_id))

        # The next run regresses: its alert line is the channel message, details in its thread.
        with engine.begin() as conn:  # the first run ended, so the next slot runs
            conn.exec_driver_sql(f"UPDATE jobs SET status = 'succeeded' WHERE id = {job_id}")
        watches.run_soon(engine=engine, watch_id=1)
        assert watches.tick(engine=engine, waker=None, settings=settings)
        second = watches.get_watch(engine=engine, watch_id=1)
        assert second is not None and second.last_job_id not in (None, job_id)
        job_id = second.last_job_id
        _chatter(engine, job_id)
        line = "🚨 Watch #1: colours:production dropped from 100.0% to 50.0%"
        watches.emit_alert(engine=engine, job_id=job_id, waker=None, reply=Reply(
            text=line, status=line, blocks=[section(line), section("flipped: red, orange")]))
        jobs.emit(engine=engine, job_id=job_id, kind="final",
                  reply=Reply(text="✅ done", status="✅ done"))
        deliver_pending(settings, engine, job_id, client)
        posted = slack.messages("C0ALERTS")
        roots = [m for m in posted if m.get("thread_ts") in (None, m["ts"])]
        assert [m["text"] for m in roots] == [line]
        assert not any(b.get("type") == "actions" for b in roots[0].get("blocks", []))
        thread = slack.thread("C0ALERTS", roots[0]["ts"])
        assert len(thread) == 1 and "flipped: red, orange" in str(thread[0]["blocks"])
        engine.dispose()


def test_a_channel_that_refuses_for_good_pauses_the_watch_and_dms_its_owner(
        tmp_path: Path) -> None:
    with SlackAPIServer(bot_token=TOKEN) as slack:
        settings = make_settings(tmp_path, slack_api_url=slack.api_url, slack_bot_token=TOKEN,
                                 slack_posts_per_second=50.0)
        migrate.upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        slack.add_channel("C0GONE", "gone", is_member=False)
        job_id = _run_job(engine, settings, "C0GONE")
        watches.emit_alert(engine=engine, job_id=job_id, waker=None,
                           reply=Reply(text="🚨 regression", status="🚨 regression"))
        out = deliver_pending(settings, engine, job_id, make_client(settings))
        assert out.failed == "not_in_channel"
        watch = watches.get_watch(engine=engine, watch_id=1)
        assert watch is not None and watch.state == "paused"
        assert "not_in_channel" in watch.note
        dms = slack.messages("U0ALICE")
        assert len(dms) == 1 and "Your watch #1 (colours:production on colours-eval) is " \
            "paused" in dms[0]["text"] and "/watch stop 1" in dms[0]["text"]
        # Paused: no more runs, and no second DM if another of its jobs fails the same way.
        assert watches.tick(engine=engine, waker=None, settings=settings) == []
        engine.dispose()


def test_a_failed_run_posts_once_for_a_run_of_failures(tmp_path: Path) -> None:
    with SlackAPIServer(bot_token=TOKEN) as slack:
        settings = make_settings(tmp_path, slack_api_url=slack.api_url, slack_bot_token=TOKEN,
                                 slack_posts_per_second=50.0)
        migrate.upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        client = make_client(settings)
        slack.add_channel("C0ALERTS", "alerts")
        failed = Reply(text="❌ 👁 Watch #1 · #1 · failed: no dataset `colours-eval`",
                       status="❌ 👁 Watch #1 · #1 · failed", error=True)
        job_id = _run_job(engine, settings, "C0ALERTS")
        _chatter(engine, job_id)
        jobs.emit(engine=engine, job_id=job_id, kind="final", reply=failed)
        deliver_pending(settings, engine, job_id, client)
        roots = slack.messages("C0ALERTS")
        assert [m["text"] for m in roots if m.get("thread_ts") in (None, m["ts"])] == [
            "❌ 👁 Watch #1 · #1 · failed"]
        # The next run fails as well: its failure stays in SQL (the first one said it).
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET status = 'failed'")
        watches.run_soon(engine=engine, watch_id=1)
        assert watches.tick(engine=engine, waker=None, settings=settings)
        again = watches.get_watch(engine=engine, watch_id=1)
        assert again is not None and again.last_job_id not in (None, job_id)
        jobs.emit(engine=engine, job_id=again.last_job_id or 0, kind="final", reply=failed)
        deliver_pending(settings, engine, again.last_job_id or 0, client)
        assert len(slack.messages("C0ALERTS")) == len(roots)
        engine.dispose()


def test_watch_as_a_slash_command_and_a_mention(tmp_path: Path, redis_url: str) -> None:
    with running_stack(tmp_path, None, redis_url, watch_min_seconds=60) as stack:
        seed_colours(stack.core.engine, stack.settings, tmp_path)
        resp = stack.slash("colours on colours-eval every=hour "
                           "channel=<#C0ALERTS|alerts>", command="/watch")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["response_type"] == "in_channel", body
        assert "Watch #1: colours (now colours@2)" in body["text"] and "C0ALERTS" in body["text"]
        bad = stack.slash("colours on colours-eval every=30", command="/watch").json()
        assert bad["response_type"] == "ephemeral" and "at least 1m" in bad["text"]
        assert "Usage: /watch REF on DATASET every=hour|day|week" in bad["text"]
        event = app_mention_event("<@U0BOT> watch list", thread_ts="1767225600.000200")
        assert stack.post(event_body(event)).status_code == 200
        stack.slack.wait_for(lambda: stack.slack.thread("C0CHANNEL", "1767225600.000200")
                             or None, timeout=10)
        listed = str(stack.slack.thread("C0CHANNEL", "1767225600.000200"))
        assert "colours-eval" in listed and "C0ALERTS" in listed
