"""A job's thread in the terminal: `tunebot run --follow` and `make demo` print it as it grows."""

from __future__ import annotations

import time

import typer

from tunebot import jobs
from tunebot.core import Core
from tunebot.models import FINAL_STATUSES
from tunebot.replies import Reply, render_text

NO_WORKER_SECONDS = 30.0


def print_event(job_id: int, reply: Reply, kind: str) -> None:
    """Print one thread message the way the CLI shows a job's thread."""
    if kind in ("status", "final"):
        typer.echo(f"[#{job_id}] {reply.status or reply.text}")
    else:
        typer.echo(render_text(reply))


def follow(app: Core, job_id: int, *, poll: float = 0.3) -> int:
    """Print a job's events as they arrive; 0 when it succeeded, 1 otherwise."""
    seen = 0
    started = time.monotonic()
    warned = False
    while True:
        for ev in jobs.read_events(engine=app.engine, job_id=job_id, after_seq=seen):
            seen = ev.seq
            print_event(job_id, Reply.from_dict(ev.payload), ev.kind)
        job = jobs.get(engine=app.engine, job_id=job_id)
        assert job is not None
        if job.status in FINAL_STATUSES:
            # Final events are written right after the status; drain what is left.
            time.sleep(poll)
            for ev in jobs.read_events(engine=app.engine, job_id=job_id, after_seq=seen):
                seen = ev.seq
                print_event(job_id, Reply.from_dict(ev.payload), ev.kind)
            return 0 if job.status == "succeeded" else 1
        # Never started (a parent woken between its stages has, and may wait its turn).
        if (job.status == "queued" and job.attempt == 0 and job.started_at is None
                and not warned and time.monotonic() - started > NO_WORKER_SECONDS):
            warned = True
            typer.echo(f"No worker has taken job #{job_id} in {NO_WORKER_SECONDS:.0f} s. "
                       f"Start one in another terminal: `tunebot worker --queues {job.queue}` "
                       "(or `make demo`). Still waiting…", err=True)
        time.sleep(poll)
