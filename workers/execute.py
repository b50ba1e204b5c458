"""Run one job: take its lease, keep it with a heartbeat, call the runner, record the outcome."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from typing import cast

from sqlalchemy.engine import Engine

from tunebot import jobs, telemetry
from tunebot.errors import Cancelled, JobError, LeaseLost, UserError
from tunebot.jobs import chain
from tunebot.jobs.kinds import QUEUES
from tunebot.models import FINAL_STATUSES, Job
from tunebot.redact import redact
from tunebot.replies import Reply
from tunebot.settings import Settings
from workers.context import JobContext, owner_id

log = logging.getLogger(__name__)

def runner_class(kind: str) -> type:
    """The runner class for a job kind."""
    job_kind = jobs.KINDS.get(kind)
    if job_kind is None:
        raise JobError(f"this worker has no runner for jobs of kind {kind!r}")
    # Runners are imported on first use, so a worker loads only what it runs.
    module, _, name = job_kind.runner.partition(":")
    return cast(type, getattr(importlib.import_module(module), name))


class Heartbeat(threading.Thread):
    """Renews the lease; flags the run when the lease is lost or a cancel is requested."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Beat until stopped."""
        s = self.ctx.settings
        while not self._stop_event.wait(s.heartbeat_seconds):
            try:
                state = jobs.renew_lease(engine=self.ctx.engine, job_id=self.ctx.job_id,
                                         owner=self.ctx.owner,
                                         lease_seconds=s.lease_seconds)
            except Exception as exc:  # database briefly away: the lease covers a few misses
                log.warning("heartbeat for job %s failed: %s", self.ctx.job_id, exc)
                continue
            if not state.held:
                self.ctx.lost.set()
                return
            if state.cancel_requested:
                self.ctx.cancel.set()

    def stop(self) -> None:
        """End the loop."""
        self._stop_event.set()


# What a run ends as (the metric's outcome label): final, lost, or parked between stages.
OUTCOMES = frozenset({"succeeded", "failed", "cancelled", "lease_lost", "waiting", "queued"})


def execute_job(settings: Settings, engine: Engine, waker: jobs.Waker | None,
                job_id: int) -> str:
    """Execute a job once if it can be taken; returns what happened (for logs and tests)."""
    job = jobs.get(engine=engine, job_id=job_id)
    kind = telemetry.bounded(job.kind if job else "", set(jobs.KINDS))
    if job is None or job.status in FINAL_STATUSES:
        telemetry.JOBS.labels(kind, "skipped").inc()
        return "missing" if job is None else "already-final"
    owner = owner_id()
    taken = jobs.take_lease(engine=engine, job_id=job_id, owner=owner,
                            lease_seconds=settings.lease_seconds)
    if taken is None:
        telemetry.JOBS.labels(kind, "skipped").inc()
        return "not-taken"
    queue = telemetry.bounded(taken.queue, set(QUEUES))
    if taken.attempt == 1 and taken.started_at is not None:
        waited = (taken.started_at - taken.created_at).total_seconds()
        telemetry.QUEUE_WAIT.labels(queue).observe(max(waited, 0.0))
    running = telemetry.JOBS_RUNNING.labels(queue)
    running.inc()
    started = time.monotonic()
    try:
        outcome = _run_taken(settings, engine, waker, taken, owner)
    finally:
        running.dec()
        telemetry.JOB_SECONDS.labels(kind).observe(time.monotonic() - started)
        record_gpu_memory()
    telemetry.JOBS.labels(kind, telemetry.bounded(outcome.replace("-", "_"), OUTCOMES)).inc()
    return outcome


def record_gpu_memory() -> None:
    """CUDA memory this process holds, per device, when it has loaded torch and has a GPU
    (a process that never loaded torch never used one)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            telemetry.GPU_MEMORY.labels(device, "allocated").set(
                torch.cuda.memory_allocated(index))
            telemetry.GPU_MEMORY.labels(device, "reserved").set(
                torch.cuda.memory_reserved(index))
    except Exception as exc:  # a metric never fails a job
        log.info("could not read GPU memory: %s", exc)


def _run_taken(settings: Settings, engine: Engine, waker: jobs.Waker | None, taken: Job,
               owner: str) -> str:
    """Run a job whose lease we hold and record its outcome."""
    job_id = taken.id
    assert job_id is not None
    ctx = JobContext(job=taken, settings=settings, engine=engine, waker=waker, owner=owner)
    beat = Heartbeat(ctx)
    beat.start()
    status, error, result = "failed", None, None
    try:
        ctx.status(f"{taken.title or taken.kind} · #{job_id} · running")
        ctx.say(f"Started on worker {os.uname().nodename} (pid {os.getpid()}, "
                f"attempt {taken.attempt}/{taken.max_attempts}).")
        runner = runner_class(taken.kind)(ctx)
        result = runner.run() or {}
        status = "succeeded"
    except LeaseLost:
        log.warning("job %s: lease lost, stopping without recording", job_id)
        return "lease-lost"
    except chain.Waiting as wait:
        # A parent between stages (tunebot/jobs/chain.py): it gives its worker back.
        beat.stop()
        parked = chain.park(engine=engine, waker=waker, job_id=job_id, owner=owner)
        if parked != "cancel-requested":
            log.info("job %s: %s (%s)", job_id, parked, wait.note)
            return parked
        status, error = "cancelled", "cancelled on request"
    except Cancelled:
        status, error = "cancelled", "cancelled on request"
    except (JobError, UserError) as exc:
        # The final message is posted and stored: anything credential-shaped in an exception's
        # text (a URL's userinfo or key, a token) is masked here, whichever code raised it.
        status, error = "failed", redact(str(exc))
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        status, error = "failed", redact(f"internal error ({exc.__class__.__name__}): "
                                         f"{str(exc)[:300]}")
    finally:
        beat.stop()
    title = taken.title or taken.kind
    icon = {"succeeded": "✅", "failed": "❌", "cancelled": "⏹"}[status]
    line = f"{icon} {title} · #{job_id} · {status}"
    final = Reply(text=line + (f": {error}" if error else ""), status=line,
                  error=status == "failed")
    if not jobs.finish(engine=engine, job_id=job_id, owner=owner, status=status, error=error,
                       result=result, final=final,
                       waker=waker):
        return "lease-lost"
    if status != "succeeded":
        # A parent that ended early takes its stages with it (none, for a job without any).
        chain.cancel_tree(engine=engine, job_id=job_id, waker=waker)
    return status
