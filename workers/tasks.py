"""Celery tasks of the inference and gpu queues: thin, a job id in, the runner does the work."""

from __future__ import annotations

from celery import Task, shared_task

from tunebot import watches
from tunebot.jobs.queue import GPU_TASK, INFERENCE_TASK, WATCH_TICK_TASK
from tunebot.jobs.worker_state import process_state
from workers.execute import execute_job


def _run(task: Task, job_id: int) -> str:
    state = process_state(task.app)
    return execute_job(state.settings, state.engine, state.sender, int(job_id))


@shared_task(name=INFERENCE_TASK, bind=True)
def run_inference_job(self: Task, job_id: int) -> str:
    """Run a job of the inference queue (prompt tests, data checks, comparisons)."""
    return _run(self, job_id)


@shared_task(name=GPU_TASK, bind=True)
def run_gpu_job(self: Task, job_id: int) -> str:
    """Run a job of the gpu queue (fine-tunes)."""
    return _run(self, job_id)


@shared_task(name=WATCH_TICK_TASK, bind=True)
def watch_tick(self: Task) -> list[str]:
    """Start the runs of the watches that are due (Celery beat sends this every
    TUNEBOT_WATCH_TICK_SECONDS; several beats or a late tick start nothing twice)."""
    state = process_state(self.app)
    return watches.tick(engine=state.engine, waker=state.sender, settings=state.settings)
