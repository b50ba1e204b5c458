"""Job chains in SQL (both databases): parking, waking, the quota, cancelling, the reconciler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from tests.tunebot.test_jobs import RecordingWaker
from tunebot import jobs, migrate
from tunebot.db import make_engine, session_scope
from tunebot.jobs import chain
from tunebot.models import Job


@pytest.fixture
def lite(sqlite_url: str) -> Iterator[Engine]:
    """SQLite only, for what does not depend on the database's locking (the races that do
    run on both)."""
    migrate.upgrade(sqlite_url)
    eng = make_engine(sqlite_url)
    yield eng
    eng.dispose()


def _parent(engine: Engine, waker: RecordingWaker, **kw: object) -> Job:
    sub = jobs.submit(engine=engine, waker=waker, team_id="T1", kind="noop", requested_by="U1",
                      params={}, title="parent", **kw)  # type: ignore[arg-type]
    assert sub.job.id is not None
    taken = jobs.take_lease(engine=engine, job_id=sub.job.id, owner="w1", lease_seconds=60)
    assert taken is not None and taken.attempt == 1
    return taken


def _child(engine: Engine, waker: RecordingWaker, parent: Job, stage: str) -> Job:
    return chain.submit_child(engine=engine, waker=waker, parent=parent, stage=stage,
                              kind="noop", params={"stage": stage}, title=stage).job


def _status(engine: Engine, job_id: int | None) -> str:
    assert job_id is not None
    job = jobs.get(engine=engine, job_id=job_id)
    assert job is not None
    return job.status


def test_parent_parks_without_a_worker_and_a_finished_child_requeues_it(
        engine: Engine) -> None:
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    child = _child(engine, waker, parent, "finetune")
    again = _child(engine, waker, parent, "finetune")  # a retried parent finds its child
    assert again.id == child.id and chain.stage_of(child) == "finetune"
    assert chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1") == "waiting"
    parked = jobs.get(engine=engine, job_id=parent.id)
    assert parked is not None and parked.status == "waiting"
    assert parked.lease_owner is None and parked.attempt == 0  # waiting is not a failed try
    # A stray wake-up of a waiting parent runs nothing.
    assert jobs.take_lease(engine=engine, job_id=parent.id, owner="w2", lease_seconds=60) is None
    waker.sent.clear()
    assert jobs.take_lease(engine=engine, job_id=child.id, owner="w3", lease_seconds=60)
    assert jobs.finish(engine=engine, job_id=child.id, owner="w3", status="succeeded",
                       waker=waker)
    assert _status(engine, parent.id) == "queued"
    assert ("job", parent.id, "inference") in waker.sent
    resumed = jobs.take_lease(engine=engine, job_id=parent.id, owner="w4", lease_seconds=60)
    assert resumed is not None and resumed.attempt == 1
    assert [c.id for c in chain.children(engine=engine, parent_id=parent.id)] == [child.id]


def test_park_after_the_children_ended_requeues_at_once(engine: Engine) -> None:
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    child = _child(engine, waker, parent, "optimize")
    jobs.take_lease(engine=engine, job_id=child.id, owner="w2", lease_seconds=60)
    # The child ends while the parent still runs: nothing to wake yet …
    assert jobs.finish(engine=engine, job_id=child.id, owner="w2", status="failed",
                       error="boom", waker=waker)
    assert _status(engine, parent.id) == "running"
    # … so parking finds no active child and queues the parent again itself.
    waker.sent.clear()
    assert chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1") == "queued"
    assert _status(engine, parent.id) == "queued" and waker.sent == [
        ("job", parent.id, "inference")]
    # Parking a run we no longer hold changes nothing.
    assert chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1") == "lease-lost"


def test_a_chain_is_one_job_against_the_quota(lite: Engine) -> None:
    engine = lite
    waker = RecordingWaker()
    parent = _parent(engine, waker, max_active_per_user=1)
    kids = [_child(engine, waker, parent, s) for s in ("optimize", "finetune")]
    assert all(k.parent_id == parent.id for k in kids)  # not refused: a parent's stages
    chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1")
    # Waiting still counts: the user's next request is refused, naming only the parent.
    with pytest.raises(jobs.QuotaExceeded, match=rf"\(#{parent.id}; the limit is 1\)"):
        jobs.submit(engine=engine, waker=waker, team_id="T1", kind="noop", requested_by="U1",
                    params={}, max_active_per_user=1)
    # And a waiting job keeps its active_key: a second press finds it.
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == parent.id).values(active_key="btn:7"))
    twin = jobs.submit(engine=engine, waker=waker, team_id="T1", kind="noop",
                       requested_by="U2", params={}, active_key="btn:7")
    assert not twin.created and twin.job.id == parent.id


def test_cancelling_a_waiting_parent_cancels_its_children_and_wakes_nothing(
        lite: Engine) -> None:
    engine = lite
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    queued = _child(engine, waker, parent, "optimize")
    running = _child(engine, waker, parent, "finetune")
    jobs.take_lease(engine=engine, job_id=running.id, owner="w2", lease_seconds=60)
    chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1")
    assert jobs.request_cancel(engine=engine, job_id=parent.id, waker=waker) == "cancelled"
    parent_row = jobs.get(engine=engine, job_id=parent.id)
    assert parent_row is not None and parent_row.error == "cancelled on request"
    assert sorted(chain.cancel_tree(engine=engine, job_id=parent.id, waker=waker)) == sorted(
        [queued.id, running.id])
    assert _status(engine, queued.id) == "cancelled"
    child = jobs.get(engine=engine, job_id=running.id)
    assert child is not None and child.status == "running" and child.cancel_requested
    # The running child stops at its next check; its end leaves the cancelled parent alone.
    jobs.finish(engine=engine, job_id=running.id, owner="w2", status="cancelled", waker=waker)
    assert _status(engine, parent.id) == "cancelled"


def test_a_child_failed_by_the_reconciler_wakes_its_parent(lite: Engine) -> None:
    engine = lite
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    child = _child(engine, waker, parent, "finetune")
    jobs.take_lease(engine=engine, job_id=child.id, owner="w2", lease_seconds=60)
    chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1")
    with session_scope(engine) as s:  # its worker died on its last attempt
        s.execute(update(Job).where(Job.id == child.id).values(
            attempt=5, max_attempts=5, lease_expires_at=jobs.store.utcnow()))
    out = jobs.reconcile(engine=engine, waker=waker, resend_after=60)
    assert out.failed == [child.id] and out.woken == [parent.id]
    assert _status(engine, parent.id) == "queued"


def test_the_reconciler_wakes_a_stranded_parent(lite: Engine) -> None:
    engine = lite
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    child = _child(engine, waker, parent, "finetune")
    chain.park(engine=engine, waker=waker, job_id=parent.id, owner="w1")
    # The child ends without the hook (a crash between the two writes, an old worker).
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == child.id).values(status="succeeded"))
    assert _status(engine, parent.id) == "waiting"
    out = jobs.reconcile(engine=engine, waker=waker, resend_after=60)
    assert out.woken == [parent.id] and _status(engine, parent.id) == "queued"
    assert jobs.reconcile(engine=engine, waker=waker, resend_after=60).woken == []


def test_a_childs_messages_are_told_in_its_parents_thread(lite: Engine) -> None:
    engine = lite
    waker = RecordingWaker()
    parent = _parent(engine, waker)
    child = _child(engine, waker, parent, "optimize")
    jobs.emit(engine=engine, job_id=child.id, reply=jobs.store.Reply(text="12 candidates"))
    jobs.emit(engine=engine, job_id=child.id, kind="status",
              reply=jobs.store.Reply(text="running 40%", status="x · #9 · running 40%"))
    said = [(e.kind, e.payload["text"]) for e in jobs.read_events(engine=engine,
                                                                  job_id=parent.id)]
    assert said[-1] == ("reply", f"↳ #{child.id} noop: 12 candidates")  # not its root line
    # A progress ping moves the parent's root line, naming the stage.
    jobs.emit(engine=engine, job_id=child.id, reply=jobs.store.Reply(
        text="step 7/42", status="x · #9 · running 17%"))
    kind, text = [(e.kind, e.payload) for e in jobs.read_events(engine=engine,
                                                               job_id=parent.id)][-1]
    assert kind == "status" and text["status"] == (
        f"parent · #{parent.id} · stage #{child.id} noop running 17%: step 7/42")
