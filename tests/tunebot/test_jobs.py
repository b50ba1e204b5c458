"""The job state machine, idempotent submission, leases and the reconciler, on both databases."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tunebot import jobs
from tunebot.db import session_scope
from tunebot.models import Job, utcnow
from tunebot.replies import Reply

STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
LEGAL = {("queued", "running"), ("queued", "cancelled"), ("queued", "failed"),
         ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
         ("running", "queued"), ("running", "waiting"),
         ("waiting", "queued"), ("waiting", "cancelled"), ("waiting", "failed")}


class RecordingWaker:
    """Records wake-ups instead of sending them (these tests exercise SQL alone)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str]] = []

    def send_job(self, job_id: int, queue: str) -> None:
        self.sent.append(("job", job_id, queue))

    def send_notify(self, job_id: int) -> None:
        self.sent.append(("notify", job_id, "io"))


@pytest.mark.parametrize(("a", "b"), list(itertools.product(STATUSES, STATUSES)))
def test_state_machine(a: str, b: str) -> None:
    if (a, b) in LEGAL:
        jobs.check_transition(a, b)
    else:
        with pytest.raises(jobs.IllegalTransition):
            jobs.check_transition(a, b)


def _submit(engine: Engine, waker: RecordingWaker | None = None, **kw: object) -> jobs.Submitted:
    args: dict[str, object] = {"team_id": "T1", "kind": "noop", "requested_by": "U1",
                               "params": {}}
    args.update(kw)
    return jobs.submit(engine=engine, waker=waker, **args)  # type: ignore[arg-type]


def test_same_idempotency_key_maps_to_one_job(engine: Engine) -> None:
    waker = RecordingWaker()
    first = _submit(engine, waker, idempotency_key="T1:trigger-1")
    again = _submit(engine, waker, idempotency_key="T1:trigger-1")
    assert first.created and not again.created
    assert first.job.id == again.job.id
    assert waker.sent == [("job", first.job.id, "inference")]


def test_idempotency_key_is_unique_in_sql(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Job(team_id="T1", kind="noop", queue="inference", requested_by="U", params={},
                  idempotency_key="k"))
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Job(team_id="T1", kind="noop", queue="inference", requested_by="U", params={},
                  idempotency_key="k"))


def test_active_key_blocks_only_while_active(engine: Engine) -> None:
    a = _submit(engine, active_key="btn:1")
    b = _submit(engine, active_key="btn:1")
    assert a.job.id == b.job.id and not b.created
    taken = jobs.take_lease(engine=engine, job_id=a.job.id, owner="w1", lease_seconds=30)
    assert taken is not None
    assert jobs.finish(engine=engine, job_id=a.job.id, owner="w1", status="succeeded")
    c = _submit(engine, active_key="btn:1")
    assert c.created and c.job.id != a.job.id
    with pytest.raises(IntegrityError), session_scope(engine) as s:  # the partial index itself
        s.add(Job(team_id="T1", kind="noop", queue="inference", requested_by="U", params={},
                  active_key="btn:1"))


def test_quota_counts_active_jobs_per_user(engine: Engine) -> None:
    for _ in range(2):
        _submit(engine, max_active_per_user=2)
    with pytest.raises(jobs.QuotaExceeded, match="limit is 2"):
        _submit(engine, max_active_per_user=2)
    _submit(engine, requested_by="U2", max_active_per_user=2)


def test_lease_is_exclusive_and_finish_needs_it(engine: Engine) -> None:
    job = _submit(engine).job
    assert jobs.take_lease(engine=engine, job_id=job.id, owner="w1", lease_seconds=30) is not None
    assert jobs.take_lease(engine=engine, job_id=job.id, owner="w2", lease_seconds=30) is None
    assert not jobs.renew_lease(engine=engine, job_id=job.id, owner="w2", lease_seconds=30).held
    assert jobs.renew_lease(engine=engine, job_id=job.id, owner="w1", lease_seconds=30).held
    assert not jobs.finish(engine=engine, job_id=job.id, owner="w2", status="succeeded")
    assert jobs.finish(engine=engine, job_id=job.id, owner="w1", status="succeeded")
    got = jobs.get(engine=engine, job_id=job.id)
    assert got is not None and got.status == "succeeded" and got.attempt == 1
    with pytest.raises(jobs.IllegalTransition):
        jobs.finish(engine=engine, job_id=job.id, owner="w1", status="queued")


def _expire(engine: Engine, job_id: int) -> None:
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=5)))


def test_expired_lease_is_requeued_exactly_once(engine: Engine) -> None:
    waker = RecordingWaker()
    job = _submit(engine).job
    jobs.take_lease(engine=engine, job_id=job.id, owner="dead-worker", lease_seconds=30)
    _expire(engine, job.id)
    first = jobs.reconcile(engine=engine, waker=waker, resend_after=60)
    second = jobs.reconcile(engine=engine, waker=waker, resend_after=60)
    assert first.requeued == [job.id] and second.requeued == []
    assert waker.sent.count(("job", job.id, "inference")) == 1
    got = jobs.get(engine=engine, job_id=job.id)
    assert got is not None and got.status == "queued" and got.lease_owner is None
    # The dead worker's late heartbeat and finish are refused: it no longer holds the lease.
    assert not jobs.renew_lease(engine=engine, job_id=job.id, owner="dead-worker",
                                lease_seconds=30).held
    assert not jobs.finish(engine=engine, job_id=job.id, owner="dead-worker", status="succeeded")


def test_spent_attempts_fail_the_job_with_the_reason(engine: Engine) -> None:
    job = _submit(engine, max_attempts=1).job
    jobs.take_lease(engine=engine, job_id=job.id, owner="w", lease_seconds=30)
    _expire(engine, job.id)
    out = jobs.reconcile(engine=engine, waker=RecordingWaker(), resend_after=60)
    assert out.failed == [job.id]
    got = jobs.get(engine=engine, job_id=job.id)
    assert got is not None and got.status == "failed" and "max_attempts=1" in (got.error or "")
    assert jobs.read_events(engine=engine, job_id=job.id)[-1].payload["error"] is True


def test_lost_queued_jobs_are_resent_with_backoff(engine: Engine) -> None:
    waker = RecordingWaker()
    job = _submit(engine).job
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job.id)
                  .values(last_sent_at=utcnow() - timedelta(seconds=100)))
    assert jobs.reconcile(engine=engine, waker=waker, resend_after=10).resent == [job.id]
    assert jobs.reconcile(engine=engine, waker=waker, resend_after=10).resent == []  # backed off


def test_cancel_queued_and_running(engine: Engine) -> None:
    queued = _submit(engine).job
    assert jobs.request_cancel(engine=engine, job_id=queued.id) == "cancelled"
    # Its thread is told it ended: a final event whose status line replaces "queued".
    final = jobs.read_events(engine=engine, job_id=queued.id)[-1]
    assert final.kind == "final" and final.payload["status"].endswith("· cancelled")
    running = _submit(engine).job
    jobs.take_lease(engine=engine, job_id=running.id, owner="w", lease_seconds=30)
    assert jobs.request_cancel(engine=engine, job_id=running.id) == "running"
    assert jobs.renew_lease(engine=engine, job_id=running.id, owner="w",
                            lease_seconds=30).cancel_requested


def test_events_are_ordered_and_notify_only_for_slack_jobs(engine: Engine) -> None:
    waker = RecordingWaker()
    cli_job = _submit(engine).job
    slack_job = _submit(engine, channel="C1").job
    for i in range(3):
        jobs.emit(engine=engine, job_id=cli_job.id, reply=Reply(text=f"m{i}"), waker=waker)
    jobs.emit(engine=engine, job_id=slack_job.id, reply=Reply(text="hello"), waker=waker)
    assert [e.payload["text"] for e in jobs.read_events(engine=engine,
                                                        job_id=cli_job.id)] == ["m0", "m1", "m2"]
    assert [e.seq for e in jobs.read_events(engine=engine, job_id=cli_job.id, after_seq=1)] == [2,
                                                                                                3]
    assert waker.sent == [("notify", slack_job.id, "io")]
