"""Job chains: a parent job whose stages run as child jobs, holding no worker while it waits.

The protocol, in SQL like everything else about jobs:

1. The parent's runner submits a stage with `submit_child` (idempotent per parent and stage,
   so a retried parent finds the child it already made) and raises `Waiting`.
2. The worker parks the parent (`park`): running → "waiting", lease released, the attempt
   given back (waiting is progress, not a failure). A waiting job holds no worker, counts
   as active (the per-user quota, the active_key index) and is never re-sent by the
   reconciler. If no child is active any more when it parks, it goes straight back to
   "queued".
3. When a child reaches a final status (finished, cancelled while queued, failed by the
   reconciler), `store.wake_parent` moves the waiting parent to "queued" in the same
   transaction; the parent's runner runs again from the top, reads its children's results
   (`children`) and either submits the next stage or finishes. A parent that somehow misses
   its wake-up is woken by the reconciler (`wake_stranded`).
4. Children are the parent's: exempt from the quota, speaking in its thread
   (tunebot/jobs/events.py copies their messages there), cancelled with it (`cancel_tree`).
   A child that fails or is cancelled is for the parent's runner to judge (a fair compare
   fails with the child's error).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from tunebot.db import session_scope
from tunebot.jobs.kinds import Waker
from tunebot.jobs.store import Submitted, request_cancel, send_woken, submit
from tunebot.models import ACTIVE_STATUSES, Job, utcnow

log = logging.getLogger(__name__)

MAX_CHILDREN = 16  # a parent's stages are few; a runner looping on submit is a bug, bounded


class Waiting(Exception):  # noqa: N818  (a signal to the worker, like Cancelled)
    """Raised by a parent's runner after submitting stages: park me until a child ends."""

    def __init__(self, note: str = "") -> None:
        super().__init__(note or "waiting for its stages")
        self.note = note


def stage_key(parent_id: int, stage: str) -> str:
    """The idempotency key of a parent's stage: one child per (parent, stage)."""
    return f"chain:{parent_id}:{stage}"


def stage_of(child: Job) -> str:
    """The stage a child job stands for (from its idempotency key)."""
    key = child.idempotency_key or ""
    return key.split(":", 2)[2] if key.startswith("chain:") and key.count(":") >= 2 else ""


def submit_child(*, engine: Engine, waker: Waker | None, parent: Job, stage: str, kind: str,
                 params: dict[str, Any], title: str) -> Submitted:
    """Submit one stage of `parent` as a child job (or find the one already submitted).

    The child has no Slack channel of its own: its messages go to the parent's thread.
    """
    assert parent.id is not None
    if len(children(engine=engine, parent_id=parent.id)) >= MAX_CHILDREN:
        raise RuntimeError(f"job #{parent.id} already has {MAX_CHILDREN} stages")
    return submit(engine=engine, waker=waker, team_id=parent.team_id, kind=kind,
                  requested_by=parent.requested_by, params=params, title=title,
                  idempotency_key=stage_key(parent.id, stage), parent_id=parent.id,
                  max_attempts=parent.max_attempts)


def children(*, engine: Engine, parent_id: int) -> list[Job]:
    """A parent's child jobs, oldest first."""
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(select(Job).where(col(Job.parent_id) == parent_id)
                                    .order_by(col(Job.id))).all())


def stages(*, engine: Engine, parent_id: int) -> dict[str, Job]:
    """A parent's children by stage name."""
    return {stage_of(c): c for c in children(engine=engine, parent_id=parent_id)}


def remember(*, engine: Engine, job_id: int, owner: str, state: dict[str, Any]) -> bool:
    """Keep a running parent's notes between its runs (what it already said) in its result,
    while it holds the lease; the final result replaces them."""
    with session_scope(engine) as session:
        res = session.execute(update(Job).where(col(Job.id) == job_id,
                                                col(Job.status) == "running",
                                                col(Job.lease_owner) == owner)
                              .values(result=state))
        return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def _active_children(session: Session, parent_id: int) -> int:
    return len(session.scalars(select(col(Job.id)).where(
        col(Job.parent_id) == parent_id, col(Job.status).in_(ACTIVE_STATUSES))).all())


def park(*, engine: Engine, waker: Waker | None, job_id: int, owner: str) -> str:
    """Park a running parent we hold: "waiting" (a child is still active), "queued" (none
    is: woken at once), "cancel-requested" (it stays running: the caller ends it as
    cancelled) or "lease-lost" (someone else owns the run now)."""
    with session_scope(engine) as session:
        # The parent's row first (locking it), then its children: see store.wake_parent.
        res = session.execute(
            update(Job).where(col(Job.id) == job_id, col(Job.status) == "running",
                              col(Job.lease_owner) == owner,
                              col(Job.cancel_requested).is_(False))
            .values(status="waiting", lease_owner=None, lease_expires_at=None,
                    attempt=col(Job.attempt) - 1))
        if res.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
            held = session.execute(select(col(Job.id)).where(
                col(Job.id) == job_id, col(Job.status) == "running",
                col(Job.lease_owner) == owner)).first()
            return "cancel-requested" if held else "lease-lost"
        if _active_children(session, job_id):
            return "waiting"
        session.execute(update(Job).where(col(Job.id) == job_id)
                        .values(status="queued", sends=col(Job.sends) + 1,
                                last_sent_at=utcnow()))
        queue = str(session.execute(select(col(Job.queue)).where(col(Job.id) == job_id))
                    .scalar())
    send_woken(waker, [(job_id, queue)])
    return "queued"


def cancel_tree(*, engine: Engine, job_id: int, waker: Waker | None) -> list[int]:
    """Cancel every active descendant of a job (the job itself is the caller's); their ids.

    Call it after cancelling the parent, so a child's end finds the parent already final and
    wakes nothing.
    """
    cancelled: list[int] = []
    pending = [job_id]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for child in children(engine=engine, parent_id=current):
            assert child.id is not None
            pending.append(child.id)
            if child.status in ACTIVE_STATUSES:
                request_cancel(engine=engine, job_id=child.id, waker=waker)
                cancelled.append(child.id)
    return cancelled


def wake_stranded(*, engine: Engine, waker: Waker | None) -> list[int]:
    """Wake waiting parents none of whose children is active (a wake-up lost to a crash
    between a child's end and its parent's update, or a child failed outside `finish`)."""
    woken: list[tuple[int, str]] = []
    with session_scope(engine) as session:
        waiting = session.execute(select(col(Job.id), col(Job.queue))
                                  .where(col(Job.status) == "waiting")).all()
        for job_id, queue in waiting:
            if _active_children(session, job_id):
                continue
            res = session.execute(
                update(Job).where(col(Job.id) == job_id, col(Job.status) == "waiting")
                .values(status="queued", sends=col(Job.sends) + 1, last_sent_at=utcnow()))
            if res.rowcount == 1:  # type: ignore[attr-defined]
                woken.append((job_id, queue))
    send_woken(waker, woken)
    return [job_id for job_id, _ in woken]
