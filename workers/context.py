"""What a runner gets: its job, settings, a way to speak in the thread, metrics and checks."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from tunebot import jobs
from tunebot.errors import Cancelled, LeaseLost
from tunebot.metrics import SqlMetricLogger
from tunebot.models import Job
from tunebot.replies import Reply
from tunebot.settings import Settings


@dataclass
class JobContext:
    """The runner's view of one execution of a job."""

    job: Job
    settings: Settings
    engine: Engine
    waker: jobs.Waker | None
    owner: str
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    _last_progress: float = 0.0
    _last_progress_at: float = 0.0

    @property
    def job_id(self) -> int:
        """The job's id."""
        assert self.job.id is not None
        return self.job.id

    @property
    def artifact_dir(self) -> Path:
        """The job's own folder; checkpoints and trainer state are read back only from here."""
        path = self.settings.artifacts / f"job-{self.job_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, reply: Reply | str) -> None:
        """Post a message in the job's thread (recorded in SQL first)."""
        if isinstance(reply, str):
            reply = Reply(text=reply)
        jobs.emit(engine=self.engine, job_id=self.job_id, reply=reply, waker=self.waker)

    def status(self, line: str) -> None:
        """Change the job's root status line."""
        jobs.emit(engine=self.engine, job_id=self.job_id, reply=Reply(text=line, status=line),
                  waker=self.waker,
                  kind="status")

    def progress(self, fraction: float, text: str, *, every: float = 0.1,
                 seconds: float = 15.0) -> bool:
        """Post progress when it moved by `every` or `seconds` passed; returns whether it posted."""
        now = time.monotonic()
        if (fraction - self._last_progress < every and now - self._last_progress_at < seconds
                and fraction < 1.0):
            return False
        self._last_progress, self._last_progress_at = fraction, now
        pct = int(round(100 * fraction))
        self.say(Reply(text=text, status=f"{self.job.title} · #{self.job_id} · running {pct}%"))
        return True

    def metrics(self) -> SqlMetricLogger:
        """The SQL metric logger for this job."""
        return SqlMetricLogger(self.engine, self.job_id)

    def check(self) -> None:
        """Raise if this run must stop: the lease was lost or a user cancelled."""
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job_id} is owned by another worker now")
        if self.cancel.is_set():
            raise Cancelled()


def owner_id() -> str:
    """A unique lease owner name: host, pid and a random suffix per execution."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(3).hex()}"
