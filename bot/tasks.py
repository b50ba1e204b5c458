"""The io queue's task: deliver a job's pending events to its Slack thread."""

from __future__ import annotations

from celery import Task, shared_task

from bot.notifier import deliver_pending
from tunebot.jobs.queue import NOTIFY_TASK
from tunebot.jobs.worker_state import process_state


@shared_task(name=NOTIFY_TASK, bind=True, max_retries=None)
def notify(self: Task, job_id: int) -> int:
    """Post every undelivered event of the job, in order; on failure retry with backoff."""
    state = process_state(self.app)
    try:
        return deliver_pending(state.settings, state.engine, int(job_id))
    except Exception as exc:
        # Undelivered events stay in SQL; the reconciler also re-sends this task later.
        raise self.retry(exc=exc, countdown=min(60, 2 ** min(self.request.retries, 6))) from exc
