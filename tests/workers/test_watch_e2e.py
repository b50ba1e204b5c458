"""A watch under Celery beat, end to end: a real worker started as `tunebot worker` (its beat
and notifier with it), a tiny model and the local Slack API. The worker dies in the middle of
the first run and a new one carries on; quiet runs post nothing; moving the label to a version
that answers worse posts one alert with the flipped cases; no two runs ever overlap."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session, col

import tests.conftest as shared
from bot.notifier import CLAIM_SECONDS
from devtools.seed import CONTENT, seed_colours
from devtools.slack_api.server import SlackAPIServer
from tests.conftest import make_settings
from tunebot import catalog, jobs, migrate, watches
from tunebot.buttons import RERUN, run_action
from tunebot.commands import parse
from tunebot.core import Actor, Core, build_core
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.models import Job, Watch
from tunebot.settings import Settings

TOKEN = "xoxb-watch-e2e"
ALERTS = "C0ALERTS"
# Same prompt, two scorers: v3 passes every case, v4 none (the regression, made certain).
PASSES = dict(CONTENT, scorers=[{"type": "regex", "pattern": ".*"}])
FAILS = dict(CONTENT, scorers=[{"type": "regex", "pattern": "^zz-never$"}])


@dataclass
class World:
    settings: Settings
    app: Core
    slack: SlackAPIServer
    model: Path


@pytest.fixture
def world(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[World]:
    # The worker (and its beat) must get the shortened watch cadence as well.
    base_env = shared.settings_env

    def env(settings: Settings) -> dict[str, str]:
        out = base_env(settings)
        out.update(TUNEBOT_WATCH_TICK_SECONDS=str(settings.watch_tick_seconds),
                   TUNEBOT_WATCH_MIN_SECONDS=str(settings.watch_min_seconds),
                   TUNEBOT_MAX_WATCHES=str(settings.max_watches))
        return out

    monkeypatch.setattr(shared, "settings_env", env)
    with SlackAPIServer(bot_token=TOKEN) as slack:
        # The embedded default (SQL broker): `tunebot worker` brings beat along.
        settings = make_settings(tmp_path, slack_api_url=slack.api_url, slack_bot_token=TOKEN,
                                 slack_posts_per_second=50.0, watch_min_seconds=1,
                                 watch_tick_seconds=0.5)
        migrate.upgrade(settings.database_url)
        app = build_core(settings)
        seed_colours(app.engine, settings, tmp_path)
        with session_scope(app.engine) as s:
            for content in (PASSES, FAILS):
                catalog.save_version(session=s, team_id="T0TEAM", name="colours",
                                     content=content, author="U0ALICE")
            catalog.set_label(session=s, team_id="T0TEAM", ref="colours@3", label="live",
                              user="U0ALICE")
        slack.add_channel(ALERTS, "alerts")
        yield World(settings, app, slack, tiny_model_dir)
        app.engine.dispose()


def _watch(app: Core) -> Watch:
    w = watches.get_watch(engine=app.engine, watch_id=1)
    assert w is not None
    return w


def _runs(app: Core) -> list[Job]:
    with Session(app.engine) as s:
        return list(s.scalars(select(Job).where(col(Job.kind) == "watch_run")
                              .order_by(col(Job.id))).all())


def _wait(what: str, ok: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen in {timeout:.0f} s")


def _roots(slack: SlackAPIServer) -> list[dict[str, Any]]:
    return [m for m in slack.messages(ALERTS) if m.get("thread_ts") in (None, m["ts"])]


def test_a_watch_fires_under_beat_survives_a_crash_and_alerts_once(
        world: World, start_worker) -> None:  # type: ignore[no-untyped-def]
    app, slack = world.app, world.slack
    worker = start_worker(world.settings, "inference,gpu,io")
    actor = Actor(team_id="T0TEAM", user_id="U0ALICE", channel="C0CHANNEL")
    out = execute(parse(f"/watch colours:live on colours-eval every=1 model={world.model} "
                        f"channel=<#{ALERTS}|alerts>"), actor, app)
    assert not out.reply.error, out.reply.text
    assert "Watch #1: colours:live (now colours@3)" in out.reply.text

    # Beat fires the first run; the worker dies in the middle of it. A new worker (and beat)
    # carries on from SQL: while the cut-short run still holds its lease the ticks skip their
    # slots (never a second run beside it), then that same job is retried and completes.
    first = _wait("the first run to start", lambda: next(
        (j for j in _runs(app) if j.status == "running"), None))
    worker.kill()
    worker = start_worker(world.settings, "inference,gpu,io")

    # The baseline, then a quiet run, and nothing in the channel once the notifier went
    # through every event of theirs.
    _wait("a quiet run", lambda: _watch(app).last_outcome == "quiet")
    w = _watch(app)
    assert (w.accepted_version, w.accepted_accuracy, w.accepted_passes) == (3, 1.0, [True] * 24)
    retried = jobs.get(engine=app.engine, job_id=first.id or 0)
    assert retried is not None and retried.status == "succeeded" and retried.attempt == 2
    assert retried.result["outcome"] == "baseline"  # the run the crash interrupted
    quiet = [j.id for j in _runs(app) if j.status == "succeeded"]
    # The killed worker's notifier may have died holding a job's delivery claim: the next
    # one takes over when that claim runs out (bot.notifier.CLAIM_SECONDS).
    _wait("the notifier to see the quiet runs' events", lambda: all(
        e.delivered_at is not None for i in quiet
        for e in jobs.read_events(engine=app.engine, job_id=i or 0)),
        timeout=CLAIM_SECONDS + 60)
    assert slack.messages(ALERTS) == []

    # Production moves to a version that answers worse: the watch follows the label, posts
    # one alert, and the run after it (as bad) stays quiet.
    with session_scope(app.engine) as s:
        catalog.set_label(session=s, team_id="T0TEAM", ref="colours@4", label="live",
                          user="U0ALICE")
    _wait("the regression", lambda: _watch(app).alert_job_id is not None)
    _wait("a run after it", lambda: _watch(app).last_outcome == "still-regressed")
    roots = _wait("the alert in the channel", lambda: _roots(slack))
    assert len(roots) == 1, roots
    alert = roots[0]["text"]
    assert alert.startswith("🚨 Watch #1: colours:live (colours@4) on colours-eval dropped "
                            "from 100.0% to 0.0%") and "24 case(s) broke" in alert, alert
    details = str(slack.thread(ALERTS, roots[0]["ts"]))
    assert "Cases that passed in job #" in details and "red" in details
    assert "first 10 of 24" in details
    w = _watch(app)
    assert w.accepted_version == 3 and w.last_outcome == "still-regressed"

    # Re-run on a run's message never runs a second copy beside the schedule: the copy only
    # makes the watch due now, and says so where it was clicked.
    copy = run_action(RERUN, str(first.id), actor, app)
    assert copy.job is not None and copy.job.channel == "C0CHANNEL"
    done = _wait("the copy", lambda: (j := jobs.get(engine=app.engine, job_id=copy.job.id or 0))
                 and j.status == "succeeded" and j)
    assert done.result == {"rescheduled": 1}
    time.sleep(1.0)  # a late duplicate alert, if any, would be posted by now
    assert len(_roots(slack)) == 1
    worker.kill()  # the test is done with it: no need to wait for a warm shutdown

    # One run at a time, each slot once: no two runs of the watch ever overlapped.
    runs = [j for j in _runs(app) if j.started_at is not None and j.finished_at is not None
            and j.id != copy.job.id]
    assert len(runs) >= 4
    runs.sort(key=lambda j: j.started_at)  # type: ignore[arg-type,return-value]
    for before, after in zip(runs, runs[1:], strict=False):
        assert after.started_at >= before.finished_at, (before.id, after.id)  # type: ignore[operator]
    seqs = [j.params["seq"] for j in _runs(app) if j.id != copy.job.id]
    assert len(seqs) == len(set(seqs))
    assert all(j.status == "succeeded" for j in runs), [(j.id, j.error) for j in runs]
