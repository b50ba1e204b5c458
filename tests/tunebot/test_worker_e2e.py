"""A real `tunebot worker` process runs jobs end to end, on Redis and on the embedded broker."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.conftest import make_settings, wait_final
from tunebot import jobs, migrate
from tunebot.db import make_engine, session_scope
from tunebot.jobs.queue import Sender, make_celery
from tunebot.models import Job, utcnow
from tunebot.settings import Settings


def _roundtrip(settings: Settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    start_worker(settings)
    sender = Sender(make_celery(settings))
    sub = jobs.submit(engine=engine, waker=sender, team_id="T1", kind="noop",
                      requested_by="U1", params={"seconds": 0.3}, title="ping")
    job = wait_final(engine, sub.job.id)
    assert job.status == "succeeded" and job.attempt == 1 and job.result == {
        "pong": True, "seconds": 0.3}
    texts = [e.payload["text"] for e in jobs.read_events(engine=engine, job_id=job.id)]
    assert texts[0].endswith("running") and texts[1].startswith("Started on worker")
    assert any("pong" in t for t in texts) and "succeeded" in texts[-1]


@pytest.mark.redis
@pytest.mark.postgres
def test_noop_job_through_redis_and_postgres(tmp_path: Path, start_worker, redis_url: str,
                                              pg_url: str) -> None:
    _roundtrip(make_settings(tmp_path, broker_url=redis_url, database_url=pg_url), start_worker)


def test_noop_job_through_embedded_sqlite_broker(tmp_path: Path, start_worker) -> None:
    _roundtrip(make_settings(tmp_path), start_worker)


@pytest.mark.redis
def test_expired_lease_is_recovered_exactly_once_by_a_real_worker(
        tmp_path: Path, start_worker, redis_url: str) -> None:
    settings = make_settings(tmp_path, broker_url=redis_url)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    # A job whose worker died mid-run: running, lease expired, no broker message left.
    sub = jobs.submit(engine=engine, waker=None, team_id="T1", kind="noop", requested_by="U1",
                      params={"seconds": 0.1}, title="orphan")
    assert jobs.take_lease(engine=engine, job_id=sub.job.id, owner="dead-host:1:abc",
                           lease_seconds=60) is not None
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == sub.job.id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    start_worker(settings)
    job = wait_final(engine, sub.job.id, timeout=60)
    assert job.status == "succeeded"
    assert job.attempt == 2  # the dead run, then exactly one recovery
    started = [e for e in jobs.read_events(engine=engine, job_id=job.id)
               if e.payload["text"].startswith("Started on worker")]
    assert len(started) == 1


def test_cancel_stops_a_running_job(tmp_path: Path, start_worker) -> None:
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    start_worker(settings)
    sub = jobs.submit(engine=engine, waker=Sender(make_celery(settings)), team_id="T1",
                      kind="noop", requested_by="U1", params={"seconds": 30}, title="long")
    deadline = time.monotonic() + 30
    while jobs.get(engine=engine, job_id=sub.job.id).status != "running":  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    jobs.request_cancel(engine=engine, job_id=sub.job.id)
    job = wait_final(engine, sub.job.id, timeout=20)
    assert job.status == "cancelled"
