"""The CLI and the worker's Celery tasks, run in the test's own process: `tunebot …` through its
typer app with the settings' environment, and queued jobs through their task names, as a
worker's pool process runs them (the job row is the message; no broker round trip, no worker
start-up, so a test of many variants stays fast)."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Iterable
from typing import Any

from typer.testing import CliRunner

import workers.tasks  # noqa: F401 - registers the tasks the names below look up
from devtools.env import settings_env
from tunebot.cli import cli
from tunebot.jobs import worker_state
from tunebot.jobs.queue import TASK_FOR_QUEUE, make_celery
from tunebot.settings import Settings


def tunebot_cli(settings: Settings, *args: str) -> tuple[int, str]:
    """`tunebot ARGS` with these settings; (exit code, everything it printed)."""
    # A command sets up the process's logging once, as its own process would: handlers on the
    # captured (then closed) terminal of this call must not outlive it here.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(cli, list(args), env=settings_env(settings))
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    return result.exit_code, result.output


def run_queued(settings: Settings, job_ids: Iterable[int], queue: str = "inference") -> None:
    """Run each job through its queue's Celery task, called by name, in this process."""
    app = make_celery(settings, (queue,))
    task = app.tasks[TASK_FOR_QUEUE[queue]]
    # The task builds this process's engine from the app's settings once; a state left by an
    # earlier test (another database) must not be reused.
    worker_state._STATE = None
    try:
        for job_id in job_ids:
            task.apply(args=[job_id])
    finally:
        if worker_state._STATE is not None:
            worker_state._STATE.engine.dispose()
        worker_state._STATE = None


def _sql(settings: Settings, query: str, *args: object) -> list[tuple[Any, ...]]:
    # Plain SQL on the test's SQLite file: what a job left behind, read as stored.
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        return conn.execute(query, args).fetchall()


def queued_job(output: str) -> int:
    """The job number a command's answer names ("… as job #12 …")."""
    found = re.search(r"#(\d+)", output)
    assert found is not None, output
    return int(found.group(1))


def job_outcome(settings: Settings, job_id: int) -> tuple[str, str]:
    """(status, final error or "") of a job, as stored."""
    status, error = _sql(settings, "SELECT status, error FROM jobs WHERE id = ?", job_id)[0]
    return str(status), str(error or "")


def job_thread(settings: Settings, job_id: int) -> list[str]:
    """Every message of a job's thread (its stored events' payloads, as JSON)."""
    return [json.dumps(json.loads(p)) for (p,) in _sql(
        settings, "SELECT payload FROM job_events WHERE job_id = ? ORDER BY seq", job_id)]


def job_count(settings: Settings) -> int:
    """Jobs in the database."""
    return int(_sql(settings, "SELECT count(*) FROM jobs")[0][0])


def database_text(settings: Settings) -> str:
    """The whole database as SQL text: a value stored anywhere shows up in it."""
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        return "\n".join(conn.iterdump())
