"""The Celery app: queues, routing and broker options, built from Settings at each entrypoint."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from tunebot.jobs.kinds import QUEUES
from tunebot.settings import Settings

INFERENCE_TASK = "tunebot.run_inference_job"
GPU_TASK = "tunebot.run_gpu_job"
NOTIFY_TASK = "tunebot.notify"
TASK_ROUTES = {
    INFERENCE_TASK: {"queue": "inference"},
    GPU_TASK: {"queue": "gpu"},
    NOTIFY_TASK: {"queue": "io"},
}
TASK_FOR_QUEUE = {"inference": INFERENCE_TASK, "gpu": GPU_TASK}
# Celery includes task modules by name so that tunebot/ imports neither bot/ nor workers/.
MODULES_FOR_QUEUE = {"inference": "workers.tasks", "gpu": "workers.tasks", "io": "bot.tasks"}


def make_celery(settings: Settings, queues: tuple[str, ...] = ()) -> Celery:
    """A Celery app for these settings; `queues` names the task modules a worker includes."""
    include = sorted({MODULES_FOR_QUEUE[q] for q in queues})
    app = Celery("tunebot", broker=settings.broker_url, include=include)
    transport: dict[str, object] = {"visibility_timeout": settings.broker_visibility_seconds}
    if settings.broker_url.startswith("sqla+"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        # The SQL transport passes its options to create_engine, so its poll interval can only
        # be set on the class (kombu's default is 1 s, too slow for an interactive bot).
        from kombu.transport import sqlalchemy as kombu_sql

        kombu_sql.Transport.polling_interval = 0.2
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
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.tunebot_settings = settings
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
