"""The io queue's task: deliver a job's pending events to its Slack thread."""

from __future__ import annotations

from celery import Task, shared_task

from bot.notifier import MAX_ATTEMPTS, backoff, deliver_pending
from tunebot.jobs.queue import NOTIFY_TASK
from tunebot.jobs.worker_state import process_state


# Slack's failures are counted in SQL (bot/notifier.py: retry with back-off, or stop after
# MAX_ATTEMPTS in a row); Celery's maximum is only a backstop for one chain, which the
# reconciler replaces once the claim it kept lapses.
@shared_task(name=NOTIFY_TASK, bind=True, max_retries=4 * MAX_ATTEMPTS)
def notify(self: Task, job_id: int) -> int:
    """Post every undelivered event of the job, in order; retried with a capped back-off.

    The task's id names the delivery chain: its retries (same id) resume the job's claim
    after the back-off, while every other notify for the job finds it taken and returns.
    """
    state = process_state(self.app)
    owner = f"notify:{self.request.id}"
    try:
        done = deliver_pending(state.settings, state.engine, int(job_id), owner=owner)
    except Exception as exc:
        # Not a Slack refusal (those come back classified): SQL itself failed. The events
        # stay there; the claim lapses on its own, and the reconciler re-sends this task.
        raise self.retry(exc=exc, countdown=backoff(self.request.retries + 1),
                         max_retries=MAX_ATTEMPTS) from exc
    if done.retry_in is not None:
        raise self.retry(countdown=done.retry_in)
    return done.delivered
