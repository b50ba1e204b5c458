"""Reconciliation: SQL is the truth, the broker only a wake-up. Every worker process runs it.

A pass re-queues jobs whose lease expired, fails those out of attempts, re-sends queued jobs
the broker may have lost (with back-off) and re-asks for undelivered thread events.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot import telemetry
from tunebot.db import session_scope
from tunebot.jobs.chain import wake_stranded
from tunebot.jobs.events import add_event
from tunebot.jobs.kinds import Waker
from tunebot.jobs.store import send_woken, wake_parent
from tunebot.models import Job, JobEvent, utcnow
from tunebot.replies import Reply

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What one reconciler pass did."""

    requeued: list[int]
    failed: list[int]
    resent: list[int]
    notify: list[int] = field(default_factory=list)
    woken: list[int] = field(default_factory=list)  # waiting parents whose stages all ended


def reconcile(*, engine: Engine, waker: Waker | None, resend_after: float) -> Reconciled:
    """Re-queue jobs whose lease expired, fail those out of attempts, re-send lost queued jobs."""
    now = utcnow()
    out = Reconciled([], [], [])
    parents: list[tuple[int, str]] = []
    with session_scope(engine) as session:
        expired = session.execute(
            select(Job).where(col(Job.status) == "running",
                              col(Job.lease_expires_at) < now)
        ).scalars().all()
        for job in expired:
            # Compare-and-set on the lease we saw, so two reconcilers never both act.
            if job.attempt < job.max_attempts and not job.cancel_requested:
                values: dict[str, Any] = {"status": "queued", "lease_owner": None,
                                          "lease_expires_at": None,
                                          "sends": col(Job.sends) + 1,
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
            res = session.exec(
                update(Job).where(col(Job.id) == job.id, col(Job.status) == "running",
                                  col(Job.lease_owner) == job.lease_owner,
                                  col(Job.lease_expires_at) < now)
                .values(**values)
            )
            if res.rowcount == 1:
                assert job.id is not None
                target.append(job.id)
                if target is out.failed:
                    line = f"❌ {job.title or job.kind} · #{job.id} · {values['status']}"
                    reply = Reply(text=f"{line}: {values['error']}", status=line, error=True)
                    add_event(session=session, job=job, reply=reply, kind="final")
                    session.flush()
                    parent = wake_parent(session=session, job=job)
                    if parent is not None:
                        parents.append(parent)
        # Queued jobs whose wake-up the broker may have lost: re-send with back-off, since a
        # duplicate wake-up is harmless (the lease admits one run) but an unbounded one is noise.
        stale = session.execute(
            select(Job).where(col(Job.status) == "queued",
                              or_(col(Job.last_sent_at).is_(None),
                                  col(Job.last_sent_at) < now - timedelta(seconds=resend_after)))
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
        # Slack events a notifier has not delivered yet (Slack down, notifier restarted). Not
        # while a deliverer holds the job's claim (running, or waiting out its back-off: its
        # own retry comes) nor once delivery failed for good: a notify per pass would start
        # another chain each time.
        cutoff = now - timedelta(seconds=resend_after)
        undelivered = session.execute(
            select(col(JobEvent.job_id)).join(Job, col(Job.id) == col(JobEvent.job_id))
            .where(col(JobEvent.delivered_at).is_(None),
                   col(JobEvent.created_at) < cutoff,
                   col(Job.channel).is_not(None),
                   col(Job.delivery_failed_at).is_(None),
                   or_(col(Job.notify_until).is_(None), col(Job.notify_until) < now))
            .distinct()
        ).scalars().all()
        out.notify = list(undelivered)
    if out.requeued:
        telemetry.LEASES_RECOVERED.labels("requeued").inc(len(out.requeued))
    if out.failed:
        telemetry.LEASES_RECOVERED.labels("failed").inc(len(out.failed))
    send_woken(waker, parents)
    out.woken = [job_id for job_id, _ in parents]
    out.woken += wake_stranded(engine=engine, waker=waker)
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


class Reconciler(threading.Thread):
    """Every `interval` seconds: re-queue expired leases, fail spent jobs, re-send lost ones."""

    def __init__(self, engine: Engine, waker: Waker, interval: float) -> None:
        super().__init__(name="tunebot-reconciler", daemon=True)
        self.engine = engine
        self.waker = waker
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Loop until stopped; a failing pass (database down) is logged and retried."""
        while not self._stop_event.wait(self.interval):
            try:
                done = reconcile(engine=self.engine, waker=self.waker,
                                 resend_after=max(2 * self.interval, 5))
                if done.requeued or done.failed or done.resent or done.woken:
                    log.info("reconciler: requeued %s failed %s resent %s woke %s",
                             done.requeued, done.failed, done.resent, done.woken)
            except Exception as exc:
                log.warning("reconciler pass failed (%s); retrying", exc.__class__.__name__)

    def stop(self) -> None:
        """Ask the loop to end."""
        self._stop_event.set()


def wake_queued(*, engine: Engine, waker: Waker, queues: tuple[str, ...],
                limit: int = 500) -> list[int]:
    """Wake every queued job of `queues` now, oldest first (at most `limit`): what a worker
    does as it starts. A job whose send failed (the broker away, or not ready while this
    worker started) would otherwise wait out the reconciler's back-off; a second wake-up of a
    job whose message did arrive is harmless, since its lease admits one run."""
    with session_scope(engine) as session:
        queued = session.execute(
            select(col(Job.id), col(Job.queue))
            .where(col(Job.status) == "queued", col(Job.queue).in_(queues))
            .order_by(col(Job.id)).limit(limit)
        ).all()
    woken: list[int] = []
    for job_id, queue in queued:
        try:
            waker.send_job(job_id, queue)
        except Exception:
            log.warning("broker unavailable; queued jobs wait for the reconciler")
            break
        woken.append(job_id)
    return woken
