"""A tunebot stack on the private services: local Slack API, HTTP bot (uvicorn), real workers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from tests.bot.conftest import Stack
from tests.bot.conftest import running_stack as bot_stack
from tunebot import jobs
from tunebot.models import Job, JobEvent
from tunebot.replies import Reply


def running_stack(tmp_path: Path, *, database_url: str, broker_url: str,
                  start_worker: Callable[..., Any] | None = None,
                  queues: str = "inference,gpu,io", **over: Any) -> ContextManager[Stack]:
    """The bot tests' stack on the private services: fast notifier, quota out of the way."""
    settings = {"database_url": database_url, "slack_posts_per_second": 50.0,
                "max_jobs_per_user": 100_000, **over}
    return bot_stack(tmp_path, start_worker, broker_url, queues=queues, **settings)


def job_count(engine) -> int:  # type: ignore[no-untyped-def]
    """Jobs in the database."""
    with Session(engine) as s:
        return int(s.execute(select(func.count()).select_from(Job)).scalar_one())


def all_jobs(engine) -> list[Job]:  # type: ignore[no-untyped-def]
    """Every job row, by id."""
    with Session(engine, expire_on_commit=False) as s:
        return list(s.execute(select(Job).order_by(Job.id)).scalars())  # type: ignore[arg-type]


def started_counts(engine) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """How many times each job said "Started on worker" (one per run that took the lease)."""
    counts: dict[int, int] = {}
    with Session(engine) as s:
        for ev in s.execute(select(JobEvent)).scalars():
            text = Reply.from_dict(ev.payload).text or ""
            counts.setdefault(ev.job_id, 0)
            if text.startswith("Started on worker"):
                counts[ev.job_id] += 1
    return counts


def reply_texts(engine, job_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    """A job's thread replies as recorded in SQL (status events update the root instead)."""
    return [Reply.from_dict(e.payload).text for e in jobs.read_events(engine=engine, job_id=job_id)
            if e.kind in ("reply", "final")]
