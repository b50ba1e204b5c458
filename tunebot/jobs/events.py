"""A job's thread: events recorded in SQL (emit), read in order, and delivered once each.

The notifier only posts: claiming a job's delivery, reading its next undelivered event,
marking it delivered and recording the status message all happen here.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from tunebot.db import session_scope
from tunebot.jobs.kinds import Waker
from tunebot.models import Job, JobEvent, utcnow
from tunebot.replies import Reply, context

log = logging.getLogger(__name__)


def add_event(*, session: Session, job: Job, reply: Reply, kind: str,
               seq: int | None = None) -> JobEvent:
    """Add the job's next event to the caller's transaction (seq given, or max + 1)."""
    if seq is None:
        seq = session.execute(
            select(func.coalesce(func.max(col(JobEvent.seq)), 0))
            .where(col(JobEvent.job_id) == job.id)
        ).scalar_one() + 1
    assert job.id is not None
    event = JobEvent(job_id=job.id, team_id=job.team_id, seq=seq, kind=kind,
                     payload=reply.to_dict())
    session.add(event)
    return event


def notify(*, waker: Waker, job_id: int) -> None:
    """Ask the notifier to deliver the job's events; if the broker is away, SQL keeps them."""
    try:
        waker.send_notify(job_id)
    except Exception:
        log.warning("could not wake the notifier for job %s; it retries from SQL", job_id)


def emit(*, engine: Engine, job_id: int, reply: Reply, waker: Waker | None = None,
         kind: str = "reply") -> JobEvent:
    """Record what a job says (next seq in its thread) and ask the notifier to deliver it.

    A child job (a stage of its parent, tunebot/jobs/chain.py) speaks in its parent's thread:
    its messages are copied there, marked with the child's number, and its progress pings
    become the parent's root line (its own root line is not copied), so one Slack thread
    tells the whole chain.
    """
    for _ in range(5):
        try:
            with session_scope(engine) as session:
                job = session.get(Job, job_id)
                if job is None:
                    raise LookupError(job_id)
                event = add_event(session=session, job=job, reply=reply, kind=kind)
                channel = job.channel
                parent = session.get(Job, job.parent_id) if job.parent_id is not None and \
                    kind == "reply" else None
                if parent is not None:
                    # A progress ping (it carries a status line) moves the parent's root
                    # line instead of adding a message to its thread.
                    add_event(session=session, job=parent,
                              kind="status" if reply.status else "reply",
                              reply=stage_reply(job, reply, parent))
            break
        except IntegrityError:  # two writers took the same seq: take the next one
            continue
    else:
        raise RuntimeError(f"could not record an event for job {job_id}")
    if waker is not None and channel:
        notify(waker=waker, job_id=job_id)
    if waker is not None and parent is not None and parent.channel and parent.id is not None:
        notify(waker=waker, job_id=parent.id)
    return event


def stage_reply(child: Job, reply: Reply, parent: Job) -> Reply:
    """A child's message as its parent's thread shows it: prefixed with the child's number;
    a progress ping as the parent's root line (the stage and how far it is)."""
    mark = f"↳ #{child.id} {child.kind}"
    if reply.status:
        how = reply.status.rsplit("·", 1)[-1].strip()
        line = f"{parent.title or parent.kind} · #{parent.id} · stage #{child.id} " \
               f"{child.kind} {how}: {reply.text}"[:300]
        return Reply(text=line, status=line)
    blocks = [context(mark), *reply.blocks] if reply.blocks else []
    return Reply(text=f"{mark}: {reply.text}", blocks=blocks, error=reply.error)


def read_events(*, engine: Engine, job_id: int, after_seq: int = 0) -> list[JobEvent]:
    """A job's events after a sequence number, in order."""
    with Session(engine, expire_on_commit=False) as session:
        rows = session.execute(
            select(JobEvent).where(col(JobEvent.job_id) == job_id,
                                   col(JobEvent.seq) > after_seq)
            .order_by(col(JobEvent.seq))
        ).scalars().all()
        return list(rows)


# A chain waiting out its back-off keeps the claim under its own name with this suffix: only
# that chain's retry may take it back before it expires (a redelivered copy of the running
# message may not, since it finds the plain name).
WAITING = "#waiting"


def claim_delivery(*, engine: Engine, job_id: int, owner: str, seconds: float) -> bool:
    """Become the job's one deliverer for `seconds`: keeps its thread in order, posted once.

    Refused while another deliverer holds the claim (running, or waiting out its back-off),
    and for good once the job's delivery failed permanently.
    """
    now = utcnow()
    with session_scope(engine) as session:
        res = session.exec(
            update(Job).where(col(Job.id) == job_id,
                              col(Job.delivery_failed_at).is_(None),
                              or_(col(Job.notify_owner).is_(None),
                                  col(Job.notify_until) < now,
                                  col(Job.notify_owner) == owner + WAITING))
            .values(notify_owner=owner, notify_until=now + timedelta(seconds=seconds))
        )
        return res.rowcount == 1


def release_delivery(*, engine: Engine, job_id: int, owner: str) -> None:
    """Give up the job's delivery claim (if we still hold it): everything was delivered, so the
    run of failures ends."""
    with session_scope(engine) as session:
        session.execute(update(Job).where(col(Job.id) == job_id,
                                          col(Job.notify_owner) == owner)
                        .values(notify_owner=None, notify_until=None, delivery_attempts=0,
                                delivery_error=None))


def delivery_retry_later(*, engine: Engine, job_id: int, owner: str, attempts: int,
                         error: str, retry_at: datetime, grace: float) -> bool:
    """Keep the claim through a back-off: nobody else starts delivering before `retry_at`
    (+ `grace`, after which the reconciler may start over if our retry was lost). Records the
    failures in a row and the last error; False when the claim was no longer ours."""
    with session_scope(engine) as session:
        res = session.exec(
            update(Job).where(col(Job.id) == job_id, col(Job.notify_owner) == owner)
            .values(notify_owner=owner + WAITING,
                    notify_until=retry_at + timedelta(seconds=grace),
                    delivery_attempts=attempts, delivery_error=error[:512])
        )
        return res.rowcount == 1


def delivery_failed(*, engine: Engine, job_id: int, error: str) -> bool:
    """Stop delivering the job's thread for good (a permanent refusal, or attempts spent) and
    drop its claim; True only for the call that recorded it (so it is logged once)."""
    with session_scope(engine) as session:
        res = session.exec(
            update(Job).where(col(Job.id) == job_id, col(Job.delivery_failed_at).is_(None))
            .values(delivery_failed_at=utcnow(), delivery_error=error[:512],
                    notify_owner=None, notify_until=None)
        )
        return res.rowcount == 1


def next_undelivered(*, engine: Engine, job_id: int) -> tuple[Job | None, JobEvent | None]:
    """The job and its oldest event not yet delivered (None when all are)."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        ev = session.execute(
            select(JobEvent).where(col(JobEvent.job_id) == job_id,
                                   col(JobEvent.delivered_at).is_(None))
            .order_by(col(JobEvent.seq)).limit(1)
        ).scalars().first()
        return job, ev


def mark_delivered(*, engine: Engine, event_id: int, slack_ts: str | None) -> None:
    """Record that an event reached its thread (and the message it became)."""
    with session_scope(engine) as session:
        session.execute(update(JobEvent).where(col(JobEvent.id) == event_id)
                        .values(delivered_at=utcnow(), slack_ts=slack_ts,
                                delivery_attempts=col(JobEvent.delivery_attempts) + 1))


def record_status_message(*, engine: Engine, job_id: int, status_ts: str,
                          thread_ts: str) -> None:
    """Store the job's root status message and the thread its replies go to."""
    with session_scope(engine) as session:
        session.execute(update(Job).where(col(Job.id) == job_id)
                        .values(status_ts=status_ts, thread_ts=thread_ts))
