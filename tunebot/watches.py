"""Regression watches: a prompt reference re-tested on a dataset on a schedule, each run
compared, case by case, with the last accepted run. The one module writing the watches table.

The schedule is in SQL, not in Celery beat: beat only sends a tick every
TUNEBOT_WATCH_TICK_SECONDS, and `tick` takes each due watch with a compare-and-set on its
`run_seq`, so any number of beat processes (or a restarted one) start each run once. A run is
a normal job (kind `watch_run`) whose active key is the watch's own: a watch never has two
runs queued or running at once, and a tick that finds one still going skips that slot.

`judge` decides what a run means (pure, unit-tested): the first run is the baseline; a run
that is significantly worse than the last accepted one (exact McNemar p < 0.05, lower) is a
regression and alerts, once (a later run as bad stays quiet); a changed eval set alerts and
becomes the new baseline; anything else is quiet and becomes the accepted run.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from tunebot import jobs
from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.jobs.kinds import Waker
from tunebot.models import CaseResult, Watch, utcnow
from tunebot.replies import Reply
from tunebot.settings import Settings
from tunebot.stats import PairedResult, compare_paired

log = logging.getLogger(__name__)

KIND = "watch_run"
LIVE = ("active", "paused")  # what counts towards TUNEBOT_MAX_WATCHES and /watch list
DUE_BATCH = 100  # watches one tick takes at most (the rest are due at the next tick)
_WORDS = {3600: "hour", 86400: "day", 604800: "week"}


def watch_key(watch_id: int) -> str:
    """The active key of a watch's runs: at most one of them queued or running at a time."""
    return f"watch:{watch_id}"


def every_text(seconds: int) -> str:
    """hour, day, week, or a compact 6h / 30m / 90s."""
    if seconds in _WORDS:
        return _WORDS[seconds]
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _lock_team(session: Session, team_id: str) -> None:
    """Serialise watch creation per workspace (SQLite's BEGIN IMMEDIATE already does), so
    two concurrent /watch commands cannot both take the last place under the cap."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"watches:{team_id}".encode()).digest()[:8],
                             "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


@dataclass
class Created:
    """What /watch did: the watch, and whether it is new, updated, resumed or unchanged."""

    watch: Watch
    status: str


def create_watch(*, engine: Engine, team_id: str, owner: str, prompt_ref: str,
                 prompt_name: str, dataset: str, model: str | None, channel: str | None,
                 interval_seconds: int, max_watches: int, now: datetime | None = None
                 ) -> Created:
    """Add a watch that runs at the next tick; the same watch again (reference, dataset,
    model, channel) changes its interval and resumes it if paused. Refused past the cap."""
    now = now or utcnow()
    with session_scope(engine) as session:
        _lock_team(session, team_id)
        same = session.scalars(select(Watch).where(
            col(Watch.team_id) == team_id, col(Watch.state).in_(LIVE),
            col(Watch.prompt_ref) == prompt_ref, col(Watch.dataset) == dataset,
            col(Watch.model).is_(None) if model is None else col(Watch.model) == model,
            col(Watch.channel).is_(None) if channel is None else col(Watch.channel) == channel,
        ).order_by(col(Watch.id)).limit(1)).first()
        if same is not None:
            status = "unchanged"
            if same.state == "paused":
                same.state, same.note, same.next_run_at = "active", "", now
                status = "resumed"
            if same.interval_seconds != interval_seconds:
                same.interval_seconds = interval_seconds
                same.next_run_at = min(same.next_run_at, now + timedelta(
                    seconds=interval_seconds))
                status = "resumed" if status == "resumed" else "updated"
            same.updated_at = now
            session.add(same)
            return Created(same, status)
        live = session.execute(select(func.count()).select_from(Watch).where(
            col(Watch.team_id) == team_id, col(Watch.state).in_(LIVE))).scalar_one()
        if live >= max_watches:
            raise UserError(f"this workspace already has {live} watches (the limit is "
                            f"{max_watches}, TUNEBOT_MAX_WATCHES); stop one with /watch stop ID "
                            "(see /watch list)")
        watch = Watch(team_id=team_id, owner=owner, prompt_ref=prompt_ref,
                      prompt_name=prompt_name, dataset=dataset, model=model, channel=channel,
                      interval_seconds=interval_seconds, next_run_at=now, created_at=now,
                      updated_at=now)
        session.add(watch)
        session.flush()
        return Created(watch, "created")


def get_watch(*, engine: Engine, watch_id: int, team_id: str | None = None) -> Watch | None:
    """A watch (of this workspace, when given), stopped ones included."""
    with Session(engine, expire_on_commit=False) as session:
        watch = session.get(Watch, watch_id)
        if watch is None or (team_id is not None and watch.team_id != team_id):
            return None
        return watch


def list_watches(*, engine: Engine, team_id: str) -> list[Watch]:
    """The workspace's active and paused watches, oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(select(Watch).where(
            col(Watch.team_id) == team_id, col(Watch.state).in_(LIVE)
        ).order_by(col(Watch.id))).all())


def stop_watch(*, engine: Engine, watch_id: int, by: str) -> bool:
    """Stop a watch for good (a run under way finishes, and posts nothing new); whether this
    call stopped it."""
    now = utcnow()
    with session_scope(engine) as session:
        res = session.exec(update(Watch).where(col(Watch.id) == watch_id,
                                               col(Watch.state).in_(LIVE))
                           .values(state="stopped", stopped_at=now, stopped_by=by,
                                   updated_at=now))
        return res.rowcount == 1


def pause_watch(*, engine: Engine, watch_id: int, note: str) -> Watch | None:
    """Pause an active watch (its channel refused us for good); the watch when this call
    paused it, None when it was not active (so its owner is told once)."""
    with session_scope(engine) as session:
        res = session.exec(update(Watch).where(col(Watch.id) == watch_id,
                                               col(Watch.state) == "active")
                           .values(state="paused", note=note[:500], updated_at=utcnow()))
        if res.rowcount != 1:
            return None
        return session.get(Watch, watch_id)


def run_soon(*, engine: Engine, watch_id: int, now: datetime | None = None) -> bool:
    """Make an active watch due now (it runs at the next tick, through the usual claim)."""
    now = now or utcnow()
    with session_scope(engine) as session:
        res = session.exec(update(Watch).where(col(Watch.id) == watch_id,
                                               col(Watch.state) == "active",
                                               col(Watch.next_run_at) > now)
                           .values(next_run_at=now))
        return res.rowcount == 1


# ---- the tick: claim due watches (compare-and-set) and submit their runs --------------------

def next_after(due: datetime, interval_seconds: int, now: datetime) -> datetime:
    """The first slot after `now` on the watch's grid (missed slots are not run late)."""
    step = timedelta(seconds=interval_seconds)
    if due > now:
        return due
    missed = math.floor((now - due) / step) + 1
    return due + missed * step


def due_watches(*, engine: Engine, now: datetime, limit: int = DUE_BATCH) -> list[Watch]:
    """Active watches whose next run is due, the most overdue first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(select(Watch).where(
            col(Watch.state) == "active", col(Watch.next_run_at) <= now,
        ).order_by(col(Watch.next_run_at)).limit(limit)).all())


def claim(*, engine: Engine, watch: Watch, job_id: int, now: datetime) -> bool:
    """Take the watch's due slot: moves next_run_at on and records the run's job, only while
    run_seq is still what this ticker read (so one ticker takes it, and only one)."""
    with session_scope(engine) as session:
        res = session.exec(update(Watch).where(
            col(Watch.id) == watch.id, col(Watch.run_seq) == watch.run_seq,
            col(Watch.state) == "active",
        ).values(run_seq=watch.run_seq + 1, last_job_id=job_id,
                 next_run_at=next_after(watch.next_run_at, watch.interval_seconds, now)))
        return res.rowcount == 1


def run_title(watch: Watch) -> str:
    """The title of a watch's runs (their status line, /tunebot jobs)."""
    model = f" · {watch.model}" if watch.model else ""
    return f"👁 Watch #{watch.id} · {watch.prompt_ref} on {watch.dataset}{model}"


def tick(*, engine: Engine, waker: Waker | None, settings: Settings,
         now: datetime | None = None) -> list[str]:
    """Start every due watch's run once; returns what it did, one line per watch (logs).

    The run's job is submitted before the slot is claimed, keyed by the slot (watch:ID:SEQ):
    a ticker that dies in between leaves the slot due, and the next tick finds that same job
    instead of making another. A run still queued or running (the watch's active key) is
    returned instead of a new one, so that slot is skipped.
    """
    now = now or utcnow()
    done: list[str] = []
    for watch in due_watches(engine=engine, now=now):
        assert watch.id is not None
        # The previous run failed: its alert was posted, this one's failure would repeat it.
        last = jobs.get(engine=engine, job_id=watch.last_job_id) if watch.last_job_id else None
        params: dict[str, Any] = {"watch_id": watch.id, "seq": watch.run_seq, "quiet": True,
                                  "alert_failure": last is None or last.status != "failed"}
        try:
            sub = jobs.submit(
                engine=engine, waker=waker, team_id=watch.team_id, kind=KIND,
                requested_by=watch.owner, params=params, title=run_title(watch),
                channel=watch.channel, idempotency_key=f"{watch_key(watch.id)}:{watch.run_seq}",
                active_key=watch_key(watch.id), max_attempts=settings.max_attempts)
        except Exception as exc:  # one watch's trouble never stops the others' runs
            log.warning("watch %s: could not submit its run (%s: %s)", watch.id,
                        exc.__class__.__name__, str(exc)[:200])
            continue
        assert sub.job.id is not None
        if not claim(engine=engine, watch=watch, job_id=sub.job.id, now=now):
            continue  # another ticker took this slot (with the same job)
        if sub.created or sub.job.params.get("seq") == watch.run_seq:
            done.append(f"watch #{watch.id}: run {watch.run_seq} is job #{sub.job.id}")
        else:
            done.append(f"watch #{watch.id}: run {watch.run_seq} skipped, job #{sub.job.id} "
                        "is still going")
    return done


# ---- judging a run against the last accepted one --------------------------------------------

@dataclass(frozen=True)
class Judgement:
    """What a run means for its watch."""

    outcome: str  # baseline | quiet | regression | still-regressed | dataset-changed
    accept: bool  # the run becomes the last accepted run
    alert: bool  # the channel hears about it
    paired: PairedResult | None = None  # accepted (a) vs this run (b), on the cases both judged
    cases: tuple[int, ...] = ()  # the case indexes `paired` is over, in order


def _pair(before: list[bool | None], now: list[bool | None], *, name_a: str, name_b: str
          ) -> tuple[PairedResult, tuple[int, ...]]:
    idx = tuple(i for i, (x, y) in enumerate(zip(before, now, strict=True))
                if x is not None and y is not None)
    res = compare_paired([bool(before[i]) for i in idx], [bool(now[i]) for i in idx],
                         name_a=name_a, name_b=name_b)
    return res, idx


def _drop(res: PairedResult) -> bool:
    return res.significant and res.diff_pts < 0


def judge(watch: Watch, passes: list[bool | None], dataset_hash: str, *,
          name: str = "this run") -> Judgement:
    """Compare a run (per-case pass/fail, sample 0) with the watch's last accepted run."""
    before = watch.accepted_passes
    if before is None:
        return Judgement("baseline", accept=True, alert=False)
    if watch.accepted_dataset_hash != dataset_hash or len(before) != len(passes):
        return Judgement("dataset-changed", accept=True, alert=True)
    accepted = f"accepted run (job #{watch.accepted_job_id})"
    res, idx = _pair(before, passes, name_a=accepted, name_b=name)
    if not _drop(res):
        return Judgement("quiet", accept=True, alert=False, paired=res, cases=idx)
    alerted = watch.alert_passes
    if alerted is not None and len(alerted) == len(passes):
        # Already alerted: only a further significant drop from that run posts again.
        again, _ = _pair(alerted, passes, name_a="alerted run", name_b=name)
        if not _drop(again):
            return Judgement("still-regressed", accept=False, alert=False, paired=res,
                             cases=idx)
    return Judgement("regression", accept=False, alert=True, paired=res, cases=idx)


@dataclass(frozen=True)
class RunFacts:
    """What one run measured, as the watch records it."""

    job_id: int
    passes: list[bool | None]
    accuracy: float
    version: int
    model: str
    dataset_version: int
    dataset_hash: str


def record_run(*, engine: Engine, watch_id: int, facts: RunFacts, judgement: Judgement,
               now: datetime | None = None) -> bool:
    """Record a judged run on its watch: the last run always; the accepted run when it is
    accepted (clearing any alert); the alerted run on a regression. False if stopped."""
    now = now or utcnow()
    values: dict[str, Any] = {"last_run_at": now, "last_outcome": judgement.outcome,
                              "last_accuracy": facts.accuracy, "updated_at": now}
    if judgement.accept:
        values.update(accepted_job_id=facts.job_id, accepted_at=now,
                      accepted_version=facts.version, accepted_model=facts.model[:256],
                      accepted_dataset_version=facts.dataset_version,
                      accepted_dataset_hash=facts.dataset_hash,
                      accepted_accuracy=facts.accuracy, accepted_passes=list(facts.passes),
                      alert_job_id=None, alert_passes=None)
    elif judgement.outcome == "regression":
        values.update(alert_job_id=facts.job_id, alert_passes=list(facts.passes))
    with session_scope(engine) as session:
        res = session.exec(update(Watch).where(col(Watch.id) == watch_id,
                                               col(Watch.state).in_(LIVE)).values(**values))
        return res.rowcount == 1


def record_failure(*, engine: Engine, watch_id: int, error: str) -> None:
    """A run that could not be judged: the last outcome says so (the baseline stays)."""
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(update(Watch).where(col(Watch.id) == watch_id,
                                            col(Watch.state).in_(LIVE))
                        .values(last_run_at=now, last_outcome="failed", last_accuracy=None,
                                note=error[:500], updated_at=now))


def case_results(*, engine: Engine, job_id: int, indexes: list[int]) -> dict[int, CaseResult]:
    """Sample 0 of some cases of a run (the accepted run's side of flipped cases)."""
    if not indexes:
        return {}
    with Session(engine, expire_on_commit=False) as session:
        rows = session.scalars(select(CaseResult).where(
            col(CaseResult.job_id) == job_id, col(CaseResult.sample_index) == 0,
            col(CaseResult.case_index).in_(indexes))).all()
    return {r.case_index: r for r in rows}


def emit_alert(*, engine: Engine, job_id: int, reply: Reply, waker: Waker | None) -> None:
    """Post a watch run's alert: the one kind of event a quiet job's thread delivers (its
    status line becomes the channel message, the rest goes in its thread)."""
    jobs.emit(engine=engine, job_id=job_id, reply=reply, waker=waker, kind="alert")


def is_held_back(*, params: dict[str, Any] | None, event_kind: str, error: bool) -> bool:
    """Whether a quiet job's event stays in SQL instead of going to Slack: everything but its
    alerts, and its failure unless the watch's previous run already failed (alerted once)."""
    p = params or {}
    if not p.get("quiet"):
        return False
    if event_kind == "alert":
        return False
    return not (event_kind == "final" and error and p.get("alert_failure", True))
