"""Jobs: the state machine, submission with idempotency, leases, events and reconciliation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from tunebot.db import session_scope
from tunebot.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobEvent, utcnow
from tunebot.replies import Reply

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

KIND_QUEUE = {
    "noop": "inference",
    "prompt_test": "inference",
    "prompt_compare": "inference",
    "data_check": "inference",
    "finetune_estimate": "inference",
    "compare": "inference",
    "finetune": "gpu",
}


class IllegalTransition(ValueError):
    """A status change the state machine forbids."""


class QuotaExceeded(Exception):
    """The user already has the maximum number of active jobs."""


class Waker(Protocol):
    """What submission and reconciliation need from the queue: wake workers by name."""

    def send_job(self, job_id: int, queue: str) -> None: ...  # noqa: D102

    def send_notify(self, job_id: int) -> None: ...  # noqa: D102


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
) -> Submitted:
    """Commit a job row (deduplicated by its keys), then wake a worker for it.

    `announce` builds the job's first thread event (its "queued" status), written in the same
    transaction. The keys are enforced by UNIQUE indexes: the insert is tried first and a
    repeated request is answered from the row that beat it (one transaction on the fast path).
    """
    if kind not in KIND_QUEUE:
        raise ValueError(f"unknown job kind {kind!r}")
    # Sent once right after the commit: recorded in the INSERT itself, not by an UPDATE after.
    job = Job(
        team_id=team_id, kind=kind, queue=KIND_QUEUE[kind], requested_by=requested_by,
        params=params, title=title[:512], channel=channel, thread_ts=thread_ts,
        response_url=response_url, idempotency_key=idempotency_key, active_key=active_key,
        max_attempts=max_attempts, sends=1, last_sent_at=utcnow(),
    )
    try:
        with session_scope(engine) as session:
            if max_active_per_user is not None:
                active_ids = list(session.execute(
                    select(Job.id).where(
                        Job.team_id == team_id, Job.requested_by == requested_by,  # type: ignore[arg-type]
                        Job.status.in_(ACTIVE_STATUSES),  # type: ignore[attr-defined]
                    ).order_by(Job.id)  # type: ignore[arg-type]
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
                _add_event(session, job, announce(job), "status", seq=1)  # a new job's first
    except (IntegrityError, QuotaExceeded):
        # The same request again (or a concurrent twin that won the race): answer with its
        # job — even when the user is now at the quota.
        existing = _find_existing(engine, idempotency_key, active_key)
        if existing is None:
            raise
        return Submitted(existing, False)
    if waker is not None:
        _wake(waker, job)
        if announce is not None and job.channel:
            _notify(waker, job.id)  # type: ignore[arg-type]
    return Submitted(job, True)


def _wake(waker: Waker, job: Job) -> None:
    assert job.id is not None
    try:
        waker.send_job(job.id, job.queue)
    except Exception:  # the reconciler re-sends from SQL; the job row is already safe
        log.warning("could not send job %s to the broker; the reconciler will retry", job.id)


def _find_existing(engine: Engine, idem: str | None, active: str | None) -> Job | None:
    if idem is None and active is None:
        return None
    with Session(engine, expire_on_commit=False) as session:
        if idem is not None:
            found = session.execute(
                select(Job).where(Job.idempotency_key == idem)  # type: ignore[arg-type]
            ).scalars().first()
            if found is not None:
                return found
        if active is not None:
            return session.execute(
                select(Job).where(Job.active_key == active,  # type: ignore[arg-type]
                                  Job.status.in_(ACTIVE_STATUSES))  # type: ignore[attr-defined]
            ).scalars().first()
    return None


def get(engine: Engine, job_id: int, team_id: str | None = None) -> Job | None:
    """Load a job, optionally only within one workspace."""
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        if job is None or (team_id is not None and job.team_id != team_id):
            return None
        return job


def take_lease(engine: Engine, job_id: int, owner: str, lease_seconds: float) -> Job | None:
    """Atomically move a queued job to running under this owner's lease; None if not takeable."""
    now = utcnow()
    with session_scope(engine) as session:
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued",  # type: ignore[arg-type]
                   Job.attempt < Job.max_attempts)  # type: ignore[arg-type]
            .values(status="running", lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    heartbeat_at=now, started_at=now, attempt=Job.attempt + 1)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
    return get(engine, job_id)


@dataclass
class LeaseState:
    """What a heartbeat learns: whether the lease is still ours and whether to stop."""

    held: bool
    cancel_requested: bool


def renew_lease(engine: Engine, job_id: int, owner: str, lease_seconds: float,
                progress: float | None = None) -> LeaseState:
    """Extend our lease; tells the caller if it lost the lease or a cancel was requested."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds),
                              "heartbeat_at": now}
    if progress is not None:
        values["progress"] = progress
    with session_scope(engine) as session:
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running",  # type: ignore[arg-type]
                              Job.lease_owner == owner).values(**values)  # type: ignore[arg-type]
        )
        held = res.rowcount == 1  # type: ignore[attr-defined]
        cancel = bool(session.execute(
            select(Job.cancel_requested).where(Job.id == job_id)  # type: ignore[arg-type]
        ).scalar())
    return LeaseState(held, cancel)


def finish(engine: Engine, job_id: int, owner: str, status: str, *,
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
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running",  # type: ignore[arg-type]
                              Job.lease_owner == owner).values(**values)  # type: ignore[arg-type]
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        job = session.get(Job, job_id)
        assert job is not None
        channel = job.channel
        if final is not None:
            _add_event(session, job, final, "final")
    if final is not None and waker is not None and channel:
        _notify(waker, job_id)
    return True


def request_cancel(engine: Engine, job_id: int, waker: Waker | None = None) -> str:
    """Cancel a queued job now, or ask a running one to stop at its next check; returns status.

    A queued job that never ran gets its final message here, so its thread says it ended.
    """
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(job_id)
        ended = job.status == "queued"
        if ended:
            set_status(job, "cancelled")
            job.error = "cancelled before it started"
            line = f"⏹ {job.title or job.kind} · #{job.id} · cancelled"
            _add_event(session, job, Reply(text=f"{line}: {job.error}", status=line), "final")
        elif job.status == "running":
            job.cancel_requested = True
        session.add(job)
        status, channel = job.status, job.channel
    if ended and waker is not None and channel:
        _notify(waker, job_id)
    return status


def _add_event(session: Session, job: Job, reply: Reply, kind: str,
               seq: int | None = None) -> JobEvent:
    if seq is None:
        seq = session.execute(
            select(func.coalesce(func.max(JobEvent.seq), 0))
            .where(JobEvent.job_id == job.id)  # type: ignore[arg-type]
        ).scalar_one() + 1
    assert job.id is not None
    event = JobEvent(job_id=job.id, team_id=job.team_id, seq=seq, kind=kind,
                     payload=reply.to_dict())
    session.add(event)
    return event


def _notify(waker: Waker, job_id: int) -> None:
    try:
        waker.send_notify(job_id)
    except Exception:
        log.warning("could not wake the notifier for job %s; it retries from SQL", job_id)


def emit(engine: Engine, job_id: int, reply: Reply, waker: Waker | None = None,
         kind: str = "reply") -> JobEvent:
    """Record what a job says (next seq in its thread) and ask the notifier to deliver it."""
    for _ in range(5):
        try:
            with session_scope(engine) as session:
                job = session.get(Job, job_id)
                if job is None:
                    raise LookupError(job_id)
                event = _add_event(session, job, reply, kind)
                channel = job.channel
            break
        except IntegrityError:  # two writers took the same seq: take the next one
            continue
    else:
        raise RuntimeError(f"could not record an event for job {job_id}")
    if waker is not None and channel:
        _notify(waker, job_id)
    return event


def events(engine: Engine, job_id: int, after_seq: int = 0) -> list[JobEvent]:
    """A job's events after a sequence number, in order."""
    with Session(engine, expire_on_commit=False) as session:
        rows = session.execute(
            select(JobEvent).where(JobEvent.job_id == job_id,  # type: ignore[arg-type]
                                   JobEvent.seq > after_seq)  # type: ignore[arg-type]
            .order_by(JobEvent.seq)  # type: ignore[arg-type]
        ).scalars().all()
        return list(rows)


@dataclass
class Reconciled:
    """What one reconciler pass did."""

    requeued: list[int]
    failed: list[int]
    resent: list[int]
    notify: list[int] = field(default_factory=list)


def reconcile(engine: Engine, waker: Waker | None, *, resend_after: float) -> Reconciled:
    """Re-queue jobs whose lease expired, fail those out of attempts, re-send lost queued jobs."""
    now = utcnow()
    out = Reconciled([], [], [])
    with session_scope(engine) as session:
        expired = session.execute(
            select(Job).where(Job.status == "running",  # type: ignore[arg-type]
                              Job.lease_expires_at < now)  # type: ignore[arg-type,operator]
        ).scalars().all()
        for job in expired:
            # Compare-and-set on the lease we saw, so two reconcilers never both act.
            if job.attempt < job.max_attempts and not job.cancel_requested:
                values: dict[str, Any] = {"status": "queued", "lease_owner": None,
                                          "lease_expires_at": None, "sends": Job.sends + 1,
                                          "last_sent_at": now}
                target = out.requeued
            else:
                reason = ("cancelled (its worker stopped)" if job.cancel_requested else
                          f"its worker stopped responding {job.attempt} times "
                          f"(max_attempts={job.max_attempts})")
                values = {"status": "cancelled" if job.cancel_requested else "failed",
                          "lease_owner": None, "lease_expires_at": None,
                          "finished_at": now, "error": reason}
                target = out.failed
            res = session.execute(
                update(Job).where(Job.id == job.id, Job.status == "running",  # type: ignore[arg-type]
                                  Job.lease_owner == job.lease_owner,  # type: ignore[arg-type]
                                  Job.lease_expires_at < now)  # type: ignore[arg-type,operator]
                .values(**values)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                assert job.id is not None
                target.append(job.id)
                if target is out.failed:
                    line = f"❌ {job.title or job.kind} · #{job.id} · {values['status']}"
                    _add_event(session, job, Reply(text=f"{line}: {values['error']}",
                                                   status=line, error=True), "final")
        # Queued jobs whose wake-up the broker may have lost: re-send with back-off, since a
        # duplicate wake-up is harmless (the lease admits one run) but an unbounded one is noise.
        stale = session.execute(
            select(Job).where(Job.status == "queued",  # type: ignore[arg-type]
                              or_(Job.last_sent_at.is_(None),  # type: ignore[union-attr]
                                  Job.last_sent_at < now - timedelta(seconds=resend_after)))  # type: ignore[operator]
        ).scalars().all()
        for job in stale:
            backoff = resend_after * (2 ** min(max(job.sends - 1, 0), 6))
            if job.last_sent_at is not None and job.last_sent_at > now - timedelta(seconds=backoff):
                continue
            job.sends += 1
            job.last_sent_at = now
            session.add(job)
            assert job.id is not None
            out.resent.append(job.id)
        queues = {j.id: j.queue for j in [*expired, *stale]}
        # Slack events a notifier has not delivered yet (Slack down, notifier restarted).
        cutoff = now - timedelta(seconds=resend_after)
        undelivered = session.execute(
            select(JobEvent.job_id).join(Job, Job.id == JobEvent.job_id)  # type: ignore[arg-type]
            .where(JobEvent.delivered_at.is_(None),  # type: ignore[union-attr]
                   JobEvent.created_at < cutoff,  # type: ignore[arg-type,operator]
                   Job.channel.is_not(None)).distinct()  # type: ignore[union-attr]
        ).scalars().all()
        out.notify = list(undelivered)
    if waker is not None:
        for job_id in [*out.requeued, *out.resent]:
            try:
                waker.send_job(job_id, queues[job_id])
            except Exception:
                log.warning("broker unavailable; job %s stays queued in SQL", job_id)
        for job_id in sorted({*out.notify, *out.failed}):
            try:
                waker.send_notify(job_id)
            except Exception:
                log.warning("broker unavailable; job %s's events stay in SQL", job_id)
    return out
