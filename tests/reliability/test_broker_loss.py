"""Broker loss: the private Redis is killed (nothing saved) and restarted empty while noop jobs
are queued and running → every job still ends final and runs once; the reconciler re-sends
from SQL what the broker lost."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tests.reliability.stack import all_jobs, started_counts
from tunebot import jobs
from tunebot.core import build_core
from tunebot.models import FINAL_STATUSES


def _wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_broker_restart_loses_no_job_and_runs_none_twice(tmp_path: Path, private_pg_url: str,
                                                         fresh_redis, start_worker,
                                                         report: Report) -> None:
    n, restarts = size(12, 60), size(1, 3)
    settings = make_settings(tmp_path, database_url=private_pg_url,
                             broker_url=fresh_redis.url + "/0", lease_seconds=4.0,
                             heartbeat_seconds=1.0, reconcile_seconds=1.0,
                             max_jobs_per_user=100_000)
    worker = start_worker(settings, "inference")
    app = build_core(settings)
    ids = []
    for i in range(n):
        sub = jobs.submit(engine=app.engine, waker=app.waker, team_id="T0TEAM", kind="noop",
                          requested_by=f"U{i % 10}", params={"seconds": 0.4}, title="noop",
                          idempotency_key=f"broker-{i}")
        ids.append(sub.job.id)
    per_round = n // (restarts + 1)
    for r in range(restarts):
        # Down while one job runs and the rest wait in the broker (or in the worker's prefetch).
        _wait(lambda r=r: sum(j.status == "succeeded" for j in all_jobs(app.engine))
              >= per_round * r + 1 and any(j.status == "running" for j in all_jobs(app.engine)),
              90, "a running job")
        fresh_redis.stop()
        time.sleep(2.0)
        fresh_redis.start()
    _wait(lambda: all(j.status in FINAL_STATUSES for j in all_jobs(app.engine)),
          120 if restarts > 1 else 60, "every job final")
    rows = all_jobs(app.engine)
    started = started_counts(app.engine)
    app.engine.dispose()
    twice = [j for j, c in started.items() if c > 1]
    failed = [j.id for j in rows if j.status != "succeeded"]
    resent = sum(1 for j in rows if j.sends > 1)
    log = worker.log()
    report.add("3 broker loss", f"noop jobs across {restarts} Redis kill+restart", n,
               held=n - len(failed), lost=len(failed), duplicated=len(twice),
               note=f"{resent} re-sent by the reconciler")
    assert len(rows) == n and not failed, [(j.id, j.status, j.error) for j in rows]
    assert not twice, {j: started[j] for j in twice}
    assert resent >= 1, "the reconciler re-sent nothing although the broker lost its queue"
    assert "reconciler: requeued" in log or "resent" in log
