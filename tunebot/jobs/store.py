"""Jobs in SQL: the state machine, submission with idempotency and quotas, leases, finishing.

Store functions are keyword-only. Those that run their own transaction take `engine=`; the
job row is the source of truth, the broker only a wake-up (tunebot.jobs.queue).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from tunebot.db import session_scope
from tunebot.jobs.events import add_event, notify
from tunebot.jobs.kinds import KINDS, Waker
from tunebot.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, utcnow
from tunebot.replies import Reply

log = logging.getLogger(__name__)


TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued", "waiting"}),
    # A parent between stages (tunebot/jobs/chain.py): woken, or ended without running.
    "waiting": frozenset({"queued", "cancelled", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the state machine forbids."""


class QuotaExceeded(Exception):
    """The user already has the maximum number of active jobs."""


def check_transition(current: str, new: str) -> None:
    """Raise IllegalTransition unless current → new is legal."""
    if new not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"job status cannot go from {current} to {new}")


def set_status(job: Job, new: str) -> None:
    """Move an in-memory job row to a new status, checking the state machine."""
    check_transition(job.status, new)
    job.status = new
    now = utcnow()
    if new == "running":
        job.started_at = now
    if new in FINAL_STATUSES:
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None


@dataclass
class Submitted:
    """The job a request maps to, and whether this request created it."""

    job: Job
    created: bool


def submit(
    *,
    engine: Engine,
    waker: Waker | None,
    team_id: str,
    kind: str,
    requested_by: str,
    params: dict[str, Any],
    title: str = "",
    channel: str | None = None,
    thread_ts: str | None = None,
    response_url: str | None = None,
    idempotency_key: str | None = None,
    active_key: str | None = None,
    max_attempts: int = 5,
    max_active_per_user: int | None = None,
    announce: Callable[[Job], Reply] | None = None,
    parent_id: int | None = None,
) -> Submitted:
    """Commit a job row (deduplicated by its keys), then wake a worker for it.

    `announce` builds the job's first thread event (its "queued" status), written in the same
    transaction. The keys are enforced by UNIQUE indexes: the insert is tried first and a
    repeated request is answered from the row that beat it (one transaction on the fast path).
    A child (`parent_id`, tunebot/jobs/chain.py) is a stage of a job already counted: it never
    counts against the quota, its own or its parent's.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    # Sent once right after the commit: recorded in the INSERT itself, not by an UPDATE after.
    job = Job(
        team_id=team_id, kind=kind, queue=KINDS[kind].queue, requested_by=requested_by,
        params=params, title=title[:512], channel=channel, thread_ts=thread_ts,
        response_url=response_url, idempotency_key=idempotency_key, active_key=active_key,
        max_attempts=max_attempts, sends=1, last_sent_at=utcnow(), parent_id=parent_id,
    )
    try:
        with session_scope(engine) as session:
            if max_active_per_user is not None and parent_id is None:
                # A watch's scheduled runs (tunebot/watches.py) are the owner's, but not
                # requests of theirs: they never count against what the owner may start.
                active_ids = list(session.execute(
                    select(col(Job.id)).where(
                        col(Job.team_id) == team_id, col(Job.requested_by) == requested_by,
                        col(Job.status).in_(ACTIVE_STATUSES), col(Job.kind) != "watch_run",
                        col(Job.parent_id).is_(None),
                    ).order_by(col(Job.id))
                ).scalars())
                if len(active_ids) >= max_active_per_user:
                    listed = ", ".join(f"#{i}" for i in active_ids[:10])
                    raise QuotaExceeded(
                        f"you already have {len(active_ids)} queued or running jobs ({listed}; "
                        f"the limit is {max_active_per_user}); wait for one to finish "
                        "or cancel one with /tunebot cancel JOB"
                    )
            session.add(job)
            session.flush()
            if announce is not None:
                # a new job's first event: seq 1 without a SELECT
                add_event(session=session, job=job, reply=announce(job), kind="status", seq=1)
    except (IntegrityError, QuotaExceeded):
        # The same request again (or a concurrent twin that won the race): answer with its
        # job — even when the user is now at the quota.
        existing = _find_existing(engine, idempotency_key, active_key)
        if existing is None:
            raise
        return Submitted(existing, False)
    if waker is not None:
        _wake(engine, waker, job)
        if announce is not None and job.channel:
            assert job.id is not None  # set by the flush above
            notify(waker=waker, job_id=job.id)
    return Submitted(job, True)


def _wake(engine: Engine, waker: Waker, job: Job) -> None:
    assert job.id is not None
    try:
        waker.send_job(job.id, job.queue)
    except Exception:  # the reconciler re-sends from SQL; the job row is already safe
        log.warning("could not send job %s to the broker; the reconciler will retry", job.id)
        # Never sent: the reconciler's next pass re-sends it at once (last_sent_at is NULL)
        # instead of after its back-off, as if the broker had it.
        try:
            with session_scope(engine) as session:
                session.execute(update(Job).where(col(Job.id) == job.id,
                                                  col(Job.status) == "queued")
                                .values(last_sent_at=None))
        except Exception:
            log.warning("job %s: could not mark it unsent; the reconciler's back-off applies",
                        job.id)


def _find_existing(engine: Engine, idem: str | None, active: str | None) -> Job | None:
    if idem is None and active is None:
        return None
    with Session(engine, expire_on_commit=False) as session:
        if idem is not None:
            found = session.scalars(
                select(Job).where(col(Job.idempotency_key) == idem)
            ).first()
            if found is not None:
                return found
        if active is not None:
            return session.scalars(
                select(Job).where(col(Job.active_key) == active,
                                  col(Job.status).in_(ACTIVE_STATUSES))
            ).first()
    return None


def get(*, engine: Engine, job_id: int, team_id: str | None = None) -> Job | None:
    """Load a job, optionally only within one workspace."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        if job is None or (team_id is not None and job.team_id != team_id):
            return None
        return job


def list_jobs(*, engine: Engine, team_id: str, kinds: tuple[str, ...] | None = None,
              limit: int | None = 20) -> list[Job]:
    """The workspace's most recent jobs (of these kinds), newest first."""
    with Session(engine, expire_on_commit=False) as session:
        q = select(Job).where(col(Job.team_id) == team_id)
        if kinds:
            q = q.where(col(Job.kind).in_(kinds))
        q = q.order_by(col(Job.id).desc())
        if limit is not None:
            q = q.limit(limit)
        return list(session.scalars(q).all())


def take_lease(*, engine: Engine, job_id: int, owner: str, lease_seconds: float) -> Job | None:
    """Atomically move a queued job to running under this owner's lease; None if not takeable."""
    now = utcnow()
    with session_scope(engine) as session:
        res = session.exec(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == "queued",
                   col(Job.attempt) < col(Job.max_attempts))
            .values(status="running", lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    heartbeat_at=now, started_at=now, attempt=col(Job.attempt) + 1)
        )
        if res.rowcount != 1:
            return None
    return get(engine=engine, job_id=job_id)


@dataclass
class LeaseState:
    """What a heartbeat learns: whether the lease is still ours and whether to stop."""

    held: bool
    cancel_requested: bool


def _update_held(session: Session, job_id: int, owner: str, values: dict[str, Any]) -> bool:
    """Update a running job only while `owner` holds its lease; whether it did."""
    res = session.exec(
        update(Job).where(col(Job.id) == job_id, col(Job.status) == "running",
                          col(Job.lease_owner) == owner).values(**values)
    )
    return res.rowcount == 1


def renew_lease(*, engine: Engine, job_id: int, owner: str, lease_seconds: float,
                progress: float | None = None) -> LeaseState:
    """Extend our lease; tells the caller if it lost the lease or a cancel was requested."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds),
                              "heartbeat_at": now}
    if progress is not None:
        values["progress"] = progress
    with session_scope(engine) as session:
        held = _update_held(session, job_id, owner, values)
        cancel = bool(session.execute(
            select(col(Job.cancel_requested)).where(col(Job.id) == job_id)
        ).scalar())
    return LeaseState(held, cancel)


def finish(*, engine: Engine, job_id: int, owner: str, status: str,
           error: str | None = None, result: dict[str, Any] | None = None,
           final: Reply | None = None, waker: Waker | None = None) -> bool:
    """End a running job we hold; False when the lease was lost (someone else owns it now).

    The final reply is recorded in the same transaction, so whoever sees the final status also
    sees the final message.
    """
    if status not in FINAL_STATUSES:
        raise IllegalTransition(f"finish takes a final status, not {status}")
    check_transition("running", status)
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_owner": None,
                              "lease_expires_at": None, "error": error}
    if status == "succeeded":
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    with session_scope(engine) as session:
        if not _update_held(session, job_id, owner, values):
            return False
        job = session.get(Job, job_id)
        assert job is not None
        channel = job.channel
        if final is not None:
            add_event(session=session, job=job, reply=final, kind="final")
        parent = wake_parent(session=session, job=job)
    if final is not None and waker is not None and channel:
        notify(waker=waker, job_id=job_id)
    send_woken(waker, [parent] if parent else [])
    return True


def wake_parent(*, session: Session, job: Job) -> tuple[int, str] | None:
    """A child reached a final status: move its waiting parent back to "queued" in the
    caller's transaction; returns (parent id, queue) to send once committed, or None.

    The parent's row is locked by the UPDATE, so a parent parking at the same moment
    (chain.park locks its own row first, then reads its children) either sees this child's
    final status or is woken by this update: never both missed.
    """
    if job.parent_id is None:
        return None
    res = session.execute(
        update(Job).where(col(Job.id) == job.parent_id, col(Job.status) == "waiting")
        .values(status="queued", sends=col(Job.sends) + 1, last_sent_at=utcnow()))
    if res.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
        return None
    queue = session.execute(select(col(Job.queue)).where(col(Job.id) == job.parent_id)).scalar()
    return job.parent_id, str(queue)


def send_woken(waker: Waker | None, woken: list[tuple[int, str]]) -> None:
    """Send the jobs woken in a committed transaction (the reconciler re-sends lost ones)."""
    if waker is None:
        return
    for job_id, queue in woken:
        try:
            waker.send_job(job_id, queue)
        except Exception:
            log.warning("could not send job %s to the broker; the reconciler will retry", job_id)


def request_cancel(*, engine: Engine, job_id: int, waker: Waker | None = None) -> str:
    """Cancel a queued (or waiting) job now, or ask a running one to stop at its next check;
    returns the status. (Its children: tunebot.jobs.chain.cancel_tree.)

    A queued job that never ran gets its final message here, so its thread says it ended.
    """
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(job_id)
        ended = job.status in ("queued", "waiting")
        parent = None
        if ended:
            started = job.status == "waiting" or job.attempt > 0
            set_status(job, "cancelled")
            job.error = "cancelled on request" if started else "cancelled before it started"
            line = f"⏹ {job.title or job.kind} · #{job.id} · cancelled"
            add_event(session=session, job=job, kind="final",
                      reply=Reply(text=f"{line}: {job.error}", status=line))
            session.add(job)
            session.flush()
            parent = wake_parent(session=session, job=job)
        elif job.status == "running":
            job.cancel_requested = True
        session.add(job)
        status, channel = job.status, job.channel
    if ended and waker is not None and channel:
        notify(waker=waker, job_id=job_id)
    send_woken(waker, [parent] if parent else [])
    return status
