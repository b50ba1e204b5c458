"""The Celery app: queues, routing and broker options, built from Settings at each entrypoint.

The embedded broker (kombu's SQL transport, `sqla+sqlite:///var/broker.db`) creates its tables
and queue rows on first use with plain INSERTs. Processes starting together raced on them, and
the loser died (`IntegrityError` is no connection error to kombu, so Celery calls it
unrecoverable). So every process prepares the broker once, under a file lock next to its
database, and its channel takes the row another process inserted first instead of failing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from tunebot.jobs.kinds import QUEUES
from tunebot.settings import Settings

log = logging.getLogger(__name__)

INFERENCE_TASK = "tunebot.run_inference_job"
GPU_TASK = "tunebot.run_gpu_job"
NOTIFY_TASK = "tunebot.notify"
# Sent by Celery beat every TUNEBOT_WATCH_TICK_SECONDS; the schedule itself is in SQL
# (tunebot/watches.py), so a tick is only "look for due watches now".
WATCH_TICK_TASK = "tunebot.watch_tick"
BEAT_SCHEDULE_FILE = "celerybeat-schedule"  # beat's own state, under TUNEBOT_VAR_DIR
TASK_ROUTES = {
    INFERENCE_TASK: {"queue": "inference"},
    GPU_TASK: {"queue": "gpu"},
    NOTIFY_TASK: {"queue": "io"},
    WATCH_TICK_TASK: {"queue": "inference"},
}
TASK_FOR_QUEUE = {"inference": INFERENCE_TASK, "gpu": GPU_TASK}
# Celery includes task modules by name so that tunebot/ imports neither bot/ nor workers/.
MODULES_FOR_QUEUE = {"inference": "workers.tasks", "gpu": "workers.tasks", "io": "bot.tasks"}


DECLARE_ATTEMPTS = 5
LOCK_WAIT_SECONDS = 60.0


class RaceSafeChannel(kombu_sql.Channel):
    """kombu's SQL channel for processes that start together: a queue row another process
    inserted first is read back (kombu lets the IntegrityError kill the worker), and tables
    another process created first are used (kombu's create_all checks, then creates)."""

    # kombu caches one engine per URL for the whole class; keyed by process here as well, so
    # that a pool process forked after prepare_broker never shares its parent's connections.
    _per_process: dict[int, dict[str, Any]] = {}

    @property
    def _engines(self) -> dict[str, Any]:  # type: ignore[override]  # kombu's dict, per process
        return self._per_process.setdefault(os.getpid(), {})

    def _get_or_create(self, queue: str) -> Any:
        # kombu's channel methods carry no annotations
        parent = super()._get_or_create
        for _ in range(DECLARE_ATTEMPTS - 1):
            try:
                return parent(queue)  # type: ignore[no-untyped-call]  # untyped kombu
            except IntegrityError:
                self.session.rollback()  # someone else's row for this queue is now there
        return parent(queue)  # type: ignore[no-untyped-call]  # untyped kombu

    def _open(self) -> Any:
        for attempt in range(DECLARE_ATTEMPTS):
            try:
                return super()._open()  # type: ignore[no-untyped-call]  # untyped kombu
            except OperationalError as exc:
                if "already exists" not in str(exc) or attempt == DECLARE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05)  # another process is creating the tables right now
        raise AssertionError("unreachable")


def _sqlite_path(broker_url: str) -> Path | None:
    url = make_url(broker_url.removeprefix("sqla+").removeprefix("sqlalchemy+"))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """An exclusive lock on `path` (True), or after LOCK_WAIT_SECONDS none (False): the
    race-safe channel still copes, so a stuck holder delays a start but never stops it."""
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("broker lock %s still held after %.0f s; going on without it",
                                path, LOCK_WAIT_SECONDS)
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_broker(app: Celery) -> None:
    """Create the embedded broker's tables and declare every queue once, under a lock file
    next to its database, before anything else in this process uses it; a broker that cannot
    be opened is only logged (sends then fail and the reconciler re-sends from SQL)."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("sqla+", "sqlalchemy+")):
        return
    path = _sqlite_path(url)
    try:
        if path is None:  # a server database: the race-safe channel alone copes
            _declare(app)
            return
        with _file_lock(path.with_name(path.name + ".lock")):
            _declare(app)
    except Exception as exc:
        log.warning("could not prepare the broker at %s (%s: %s)", url.split("///")[-1],
                    exc.__class__.__name__, str(exc)[:200])


def _declare(app: Celery) -> None:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue.bind(channel).declare()


def sends_events(broker_url: str) -> bool:
    """Whether workers on this broker send Celery's events (Flower's input): Redis and AMQP
    carry them; the embedded SQL transport does not."""
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://", "amqp://",
                                  "amqps://", "pyamqp://"))


def make_celery(settings: Settings, queues: tuple[str, ...] = ()) -> Celery:
    """A Celery app for these settings; `queues` names the task modules a worker includes."""
    include = sorted({MODULES_FOR_QUEUE[q] for q in queues})
    app = Celery("tunebot", broker=settings.broker_url, include=include)
    transport: dict[str, object] = {"visibility_timeout": settings.broker_visibility_seconds}
    if settings.broker_url.startswith("sqla+"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        # The SQL transport passes its options to create_engine, so its poll interval can only
        # be set on the class (kombu's default is 1 s, too slow for an interactive bot).
        kombu_sql.Transport.polling_interval = 0.2
        kombu_sql.Transport.Channel = RaceSafeChannel
        transport = {"connect_args": {"timeout": 30}}
    # kombu's Queue and Exchange constructors have no annotations
    declared = [Queue(q, Exchange(q, type="direct"),  # type: ignore[no-untyped-call]  # untyped kombu
                      routing_key=q) for q in QUEUES]
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_routes=TASK_ROUTES,
        task_queues=declared,
        task_default_queue="inference",
        worker_prefetch_multiplier=1,
        # acks_late: a killed worker's message comes back; the SQL lease makes a second
        # delivery a no-op, and attempts in SQL bound how often a job may run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Task events feed Flower (`tunebot flower`); kombu's SQL transport has no fanout
        # exchange to carry them, so only a real broker (Redis) sends them.
        worker_send_task_events=sends_events(settings.broker_url),
        task_send_sent_event=sends_events(settings.broker_url),
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A tick that waited longer than the next one is dropped (a busy worker never works
        # through a backlog of them); a missed tick only delays a due watch to the next.
        beat_schedule={"watch-tick": {
            "task": WATCH_TICK_TASK, "schedule": settings.watch_tick_seconds,
            "options": {"queue": "inference", "expires": max(settings.watch_tick_seconds, 1.0)},
        }},
        beat_schedule_filename=str(settings.var_dir / BEAT_SCHEDULE_FILE),
    )
    app.tunebot_settings = settings
    prepare_broker(app)
    return app


class Sender:
    """Sends tasks by name; what the bot, CLI and reconciler use to wake workers."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_job(self, job_id: int, queue: str) -> None:
        """Wake a worker of `queue` for this job."""
        self.app.send_task(TASK_FOR_QUEUE[queue], args=[job_id], queue=queue)

    def send_notify(self, job_id: int) -> None:
        """Ask the notifier to deliver this job's pending events to Slack."""
        self.app.send_task(NOTIFY_TASK, args=[job_id], queue="io")
