"""/watch: the grammar, the store (claim compare-and-set, the cap, the shortest interval, who
may stop one), the tick and the judgement of a run against the last accepted one."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from devtools.seed import seed_colours
from tests.conftest import make_settings
from tunebot import watches
from tunebot.commands import parse
from tunebot.core import Actor, Core, Outcome
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.models import Job, Watch
from tunebot.replies import render_text

ALICE = Actor(team_id="T0TEAM", user_id="U0ALICE", channel="C0HERE")
BOB = Actor(team_id="T0TEAM", user_id="U0BOB", channel="C0HERE")
ADMIN = Actor(team_id="T0TEAM", user_id="U0ADMIN", is_admin=True)
OTHER = Actor(team_id="T0OTHER", user_id="U0EVE", is_admin=True)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# ---- the grammar ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "seconds"), [
    ("hour", 3600), ("day", 86400), ("week", 604800), ("Daily", 86400), ("7200", 7200),
    ("30m", 1800), ("6h", 21600), ("2d", 172800), ("1w", 604800)])
def test_every_takes_words_and_seconds(raw: str, seconds: int) -> None:
    cmd = parse(f"/watch colours:production on colours-eval every={raw}")
    assert (cmd.family, cmd.action, cmd.params["every"]) == ("watch", "set", seconds)
    assert str(cmd.args["ref"]) == "colours:production" and cmd.args["dataset"] == "colours-eval"


@pytest.mark.parametrize(("text", "says"), [
    ("/watch colours on ds every=fortnight", "every must be hour, day, week or a number"),
    ("/watch colours on ds every=0", "between 1 second and 366 days"),
    ("/watch colours on ds every=400d", "between 1 second and 366 days"),
    ("/watch colours on ds every=-5", "every must be hour"),
    ("/watch colours on ds every=day channel=#alerts", "channel must be a channel mention"),
    ("/watch colours on ds every=day channel=<@U0ALICE>", "channel must be a channel mention"),
    ("/watch colours on ds every=day cadence=1", "unknown option cadence"),
    ("/watch colours every=day", "missing 'on'"),
    ("/watch list on ds every=day", "`list` is a /watch subcommand, not a prompt name"),
    ("/watch stop on ds every=day", "`stop` is a /watch subcommand, not a prompt name"),
    ("/watch stop abc", "not a watch number"),
    ("/watch stop", "missing ID"),
    ("/watch", "/watch needs a subcommand"),
])
def test_bad_watch_commands_say_why_with_the_usage(text: str, says: str) -> None:
    with pytest.raises(UserError) as info:
        parse(text)
    assert says in str(info.value)
    assert (info.value.usage or "").startswith("/watch")


def test_channels_list_and_stop_parse() -> None:
    assert parse("/watch c on d every=day channel=<#C0ALERTS|alerts>").params["channel"] == \
        "C0ALERTS"
    assert parse("/watch c on d every=day channel=<#G0PRIV>").params["channel"] == "G0PRIV"
    assert parse("/watch c on d every=day channel=C0123ABC").params["channel"] == "C0123ABC"
    assert parse("/watch list").action == "list"
    assert parse("/tunebot watch stop #12").args == {"id": 12}
    # A prompt named like a subcommand is still reachable by version or label.
    assert parse("/watch list:production on d every=day").args["ref"].name == "list"


# ---- the handlers and the store ------------------------------------------------------------

@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Core:
    settings = make_settings(tmp_path, watch_min_seconds=60, max_watches=2)
    seed_colours(engine, settings, tmp_path)
    return Core(settings, engine, None)


def run(app: Core, text: str, actor: Actor = ALICE) -> Outcome:
    return execute(parse(text), actor, app)


def ok(app: Core, text: str, actor: Actor = ALICE) -> str:
    out = run(app, text, actor)
    assert not out.reply.error, out.reply.text
    return render_text(out.reply)


def refused(app: Core, text: str, actor: Actor = ALICE) -> str:
    out = run(app, text, actor)
    assert out.reply.error, out.reply.text
    return out.reply.text


def test_set_list_stop_with_the_cap_the_shortest_interval_and_owners(app: Core) -> None:
    said = ok(app, "/watch colours on colours-eval every=hour")
    assert "Watch #1: colours (now colours@2) on colours-eval (v1, 24 cases) every hour" in said
    assert "channel C0HERE" in said and "significantly worse" in said
    w = watches.get_watch(engine=app.engine, watch_id=1)
    assert w is not None and (w.owner, w.channel, w.interval_seconds, w.model) == (
        "U0ALICE", "C0HERE", 3600, None)
    assert "every= must be at least 1m (60 s, TUNEBOT_WATCH_MIN_SECONDS)" in refused(
        app, "/watch colours on colours-eval every=59")
    assert "no prompt `nope`" in refused(app, "/watch nope on colours-eval every=day")
    assert "no dataset `nope`" in refused(app, "/watch colours on nope every=day")
    assert "has no label `live`" in refused(app, "/watch colours:live on colours-eval every=day")
    assert "not a model reference" in refused(
        app, "/watch colours on colours-eval every=day model=../etc")
    assert "every= is required" in refused(app, "/watch colours on colours-eval")
    # The same watch again is the same watch (a resent command makes no second one).
    assert "Already watching as #1" in ok(app, "/watch colours on colours-eval every=hour", BOB)
    assert "Watch #1 updated" in ok(app, "/watch colours on colours-eval every=day")
    ok(app, "/watch colours@1 on colours-eval every=day channel=C0ALERTS")
    cap = refused(app, "/watch colours@2 on colours-eval every=day")
    assert "already has 2 watches (the limit is 2, TUNEBOT_MAX_WATCHES)" in cap
    # Listed per workspace, stopped by the owner or an admin only.
    listed = ok(app, "/watch list")
    assert "#1" in listed and "colours@1" in listed and "C0ALERTS" in listed
    assert "not yet" in listed and "day" in listed
    assert "No watches yet" in ok(app, "/watch list", OTHER)
    assert "no watch #1 in this workspace" in refused(app, "/watch stop 1", OTHER)
    assert "only watch #1's owner (U0ALICE) or an admin" in refused(app, "/watch stop 1", BOB)
    assert "Watch #1 (colours on colours-eval) stopped." in ok(app, "/watch stop 1", ADMIN)
    assert "no watch #1" in refused(app, "/watch stop 1")
    assert "stopped." in ok(app, "/watch stop 2")
    # Stopped watches leave room under the cap.
    assert "Watch #3" in ok(app, "/watch colours@2 on colours-eval every=day")


def _due(engine: Engine, ref: str = "colours:production", **fields: object) -> Watch:
    created = watches.create_watch(
        engine=engine, team_id="T0TEAM", owner="U0ALICE", prompt_ref=ref,
        prompt_name="colours", dataset="colours-eval", model=None, channel="C0ALERTS",
        interval_seconds=3600, max_watches=10, now=T0)
    if fields:
        with Session(engine) as s:
            w = s.get(Watch, created.watch.id)
            assert w is not None
            for k, v in fields.items():
                setattr(w, k, v)
            s.add(w)
            s.commit()
    return created.watch


def _runs(engine: Engine) -> list[Job]:
    with Session(engine) as s:
        return list(s.scalars(select(Job).where(col(Job.kind) == "watch_run")
                              .order_by(col(Job.id))).all())


def test_concurrent_ticks_start_each_due_run_once(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    w = _due(engine)
    assert w.id is not None
    barrier = threading.Barrier(6)
    results: list[list[str]] = []

    def ticker() -> None:
        barrier.wait()
        results.append(watches.tick(engine=engine, waker=None, settings=settings, now=T0))

    threads = [threading.Thread(target=ticker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = _runs(engine)
    assert len(runs) == 1 and sum(len(r) for r in results) == 1, results
    job = runs[0]
    assert (job.channel, job.requested_by, job.active_key, job.idempotency_key) == (
        "C0ALERTS", "U0ALICE", f"watch:{w.id}", f"watch:{w.id}:0")
    assert job.params == {"watch_id": w.id, "seq": 0, "quiet": True, "alert_failure": True}
    again = watches.get_watch(engine=engine, watch_id=w.id)
    assert again is not None and (again.run_seq, again.last_job_id) == (1, job.id)
    assert again.next_run_at == T0 + timedelta(hours=1)
    # Not due yet: nothing. Due while the first run is still queued: that slot is skipped.
    assert watches.tick(engine=engine, waker=None, settings=settings,
                        now=T0 + timedelta(minutes=59)) == []
    later = T0 + timedelta(hours=1, seconds=1)
    assert "skipped" in watches.tick(engine=engine, waker=None, settings=settings, now=later)[0]
    assert len(_runs(engine)) == 1
    # The run ends (failed): the next slot runs, and its own failure would not alert again.
    with Session(engine) as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.status = "failed"
        s.add(row)
        s.commit()
    down = T0 + timedelta(hours=5, minutes=30)  # missed slots are not run late, one by one
    assert "is job #" in watches.tick(engine=engine, waker=None, settings=settings, now=down)[0]
    runs = _runs(engine)
    assert len(runs) == 2 and runs[1].params["alert_failure"] is False
    after = watches.get_watch(engine=engine, watch_id=w.id)
    assert after is not None and after.next_run_at == T0 + timedelta(hours=6)


def test_a_ticker_that_died_after_submitting_finds_its_job_again(engine: Engine,
                                                                 tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    w = _due(engine)
    assert w.id is not None
    real_claim = watches.claim
    try:
        watches.claim = lambda **kw: False  # type: ignore[assignment]  # dies before claiming
        watches.tick(engine=engine, waker=None, settings=settings, now=T0)
    finally:
        watches.claim = real_claim  # type: ignore[assignment]  # restored
    assert len(_runs(engine)) == 1
    done = watches.tick(engine=engine, waker=None, settings=settings, now=T0)
    assert len(_runs(engine)) == 1 and "run 0 is job" in done[0]


def test_stopped_and_paused_watches_do_not_run(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    a, b = _due(engine), _due(engine, "colours@1")
    assert a.id is not None and b.id is not None
    assert watches.stop_watch(engine=engine, watch_id=a.id, by="U0ALICE")
    paused = watches.pause_watch(engine=engine, watch_id=b.id, note="not_in_channel")
    assert paused is not None and paused.state == "paused"
    assert watches.pause_watch(engine=engine, watch_id=b.id, note="again") is None  # told once
    assert watches.tick(engine=engine, waker=None, settings=settings, now=T0) == []
    # Setting the same watch again resumes it, due at once.
    again = watches.create_watch(
        engine=engine, team_id="T0TEAM", owner="U0ALICE", prompt_ref="colours@1",
        prompt_name="colours", dataset="colours-eval", model=None, channel="C0ALERTS",
        interval_seconds=3600, max_watches=10, now=T0)
    assert (again.status, again.watch.id, again.watch.state) == ("resumed", b.id, "active")


def _watch(**over: object) -> Watch:
    w = Watch(id=7, team_id="T", owner="U", prompt_ref="p:production", prompt_name="p",
              dataset="d", interval_seconds=3600, next_run_at=T0)
    for k, v in over.items():
        setattr(w, k, v)
    return w


def test_judge_baseline_quiet_regression_once_and_changed_sets() -> None:
    good = [True] * 20
    assert watches.judge(_watch(), good, "h1").outcome == "baseline"
    base = _watch(accepted_passes=good, accepted_dataset_hash="h1", accepted_job_id=3)
    quiet = watches.judge(base, [True] * 17 + [False] * 3, "h1")  # 3 broke: p=0.25
    assert (quiet.outcome, quiet.accept, quiet.alert) == ("quiet", True, False)
    bad = [True] * 8 + [False] * 12
    reg = watches.judge(base, bad, "h1")
    assert (reg.outcome, reg.accept, reg.alert) == ("regression", False, True)
    assert reg.paired is not None and reg.paired.p_value < 0.05
    assert [reg.cases[i] for i in reg.paired.flipped_worse] == list(range(8, 20))
    # Once alerted, a run as bad stays quiet; a further significant drop alerts again.
    alerted = _watch(accepted_passes=good, accepted_dataset_hash="h1", alert_passes=bad)
    assert watches.judge(alerted, [True] * 7 + [False] * 13, "h1").outcome == "still-regressed"
    assert watches.judge(alerted, [False] * 20, "h1").outcome == "regression"
    assert watches.judge(alerted, good, "h1").outcome == "quiet"  # recovered: accepted
    # Undecided cases (None) are left out of the pairing, not counted as failures.
    none = watches.judge(base, [None] * 12 + [True] * 8, "h1")
    assert none.outcome == "quiet" and none.paired is not None and none.paired.n == 8
    changed = watches.judge(base, bad, "h2")
    assert (changed.outcome, changed.accept, changed.alert) == ("dataset-changed", True, True)


def test_a_quiet_job_posts_only_its_alerts_and_its_first_failure() -> None:
    quiet = {"watch_id": 1, "quiet": True, "alert_failure": True}
    for kind in ("status", "reply"):
        assert watches.is_held_back(params=quiet, event_kind=kind, error=False)
    assert watches.is_held_back(params=quiet, event_kind="final", error=False)
    assert not watches.is_held_back(params=quiet, event_kind="alert", error=False)
    assert not watches.is_held_back(params=quiet, event_kind="final", error=True)
    assert watches.is_held_back(params=dict(quiet, alert_failure=False), event_kind="final",
                                error=True)
    assert not watches.is_held_back(params={"seconds": 1}, event_kind="status", error=False)


def test_record_run_moves_the_baseline_only_when_accepted(engine: Engine) -> None:
    w = _due(engine)
    assert w.id is not None
    facts = watches.RunFacts(job_id=11, passes=[True, True], accuracy=1.0, version=2,
                             model="smollm2", dataset_version=1, dataset_hash="h1")
    base = watches.judge(w, facts.passes, "h1")
    assert watches.record_run(engine=engine, watch_id=w.id, facts=facts, judgement=base)
    worse = watches.RunFacts(job_id=12, passes=[False, False], accuracy=0.0, version=3,
                             model="smollm2", dataset_version=1, dataset_hash="h1")
    fake = watches.Judgement("regression", accept=False, alert=True)
    assert watches.record_run(engine=engine, watch_id=w.id, facts=worse, judgement=fake)
    row = watches.get_watch(engine=engine, watch_id=w.id)
    assert row is not None
    assert (row.accepted_job_id, row.accepted_version, row.accepted_passes) == (11, 2,
                                                                               [True, True])
    assert (row.alert_job_id, row.last_outcome, row.last_accuracy) == (12, "regression", 0.0)
    watches.stop_watch(engine=engine, watch_id=w.id, by="U0ALICE")
    assert not watches.record_run(engine=engine, watch_id=w.id, facts=facts, judgement=base)


def test_every_text_and_next_after() -> None:
    assert [watches.every_text(s) for s in (3600, 86400, 604800, 7200, 1800, 90, 2)] == [
        "hour", "day", "week", "2h", "30m", "90s", "2s"]
    assert watches.next_after(T0, 3600, T0) == T0 + timedelta(hours=1)
    assert watches.next_after(T0 + timedelta(hours=1), 3600, T0) == T0 + timedelta(hours=1)
    assert watches.next_after(T0, 3600, T0 + timedelta(hours=3, minutes=1)) == \
        T0 + timedelta(hours=4)


def test_concurrent_sets_never_pass_the_cap(engine: Engine) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            watches.create_watch(
                engine=engine, team_id="T0TEAM", owner="U0ALICE", prompt_ref=f"colours@{i + 1}",
                prompt_name="colours", dataset="colours-eval", model=None, channel=None,
                interval_seconds=3600, max_watches=2)
            outcomes.append("created")
        except UserError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[:2] == ["created", "created"], outcomes
    assert all("the limit is 2" in o for o in sorted(outcomes)[2:]), outcomes
    assert len(watches.list_watches(engine=engine, team_id="T0TEAM")) == 2
