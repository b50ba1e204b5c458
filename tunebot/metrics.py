"""One small logger protocol for metrics: SQL rows, and rate-limited thread updates."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.models import Metric


class MetricLogger(Protocol):
    """Anything that records scalar values at a step."""

    def log(self, step: int, **values: float) -> None:
        """Record values at a step."""
        ...


class SqlMetricLogger:
    """Writes metrics rows; re-logging a step (after a resume) replaces it, never duplicates."""

    def __init__(self, engine: Engine, job_id: int) -> None:
        self.engine = engine
        self.job_id = job_id

    def log(self, step: int, **values: float) -> None:
        """Record values at a step."""
        if not values:
            return
        with session_scope(self.engine) as session:
            session.execute(delete(Metric).where(
                col(Metric.job_id) == self.job_id, col(Metric.step) == step,
                col(Metric.name).in_(list(values)),
            ))
            for name, value in values.items():
                session.add(Metric(job_id=self.job_id, step=step, name=name, value=float(value)))

    def truncate_after(self, step: int) -> None:
        """Drop metrics logged past `step` (a resumed run re-logs them from its checkpoint)."""
        with session_scope(self.engine) as session:
            session.execute(delete(Metric).where(
                col(Metric.job_id) == self.job_id, col(Metric.step) > step))


class ThreadMetricLogger:
    """Formats metrics into a thread message at most every `interval` seconds."""

    def __init__(self, say: Callable[[str], None], interval: float = 30.0,
                 fmt: Callable[[int, dict[str, float]], str] | None = None) -> None:
        self.say = say
        self.interval = interval
        self.fmt = fmt or (lambda s, v: f"step {s} · " + " · ".join(
            f"{k} {val:.4g}" for k, val in v.items()))
        self._last = 0.0

    def log(self, step: int, **values: float) -> None:
        """Post the values if the last post is older than the interval."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.say(self.fmt(step, values))


class MultiLogger:
    """Fans one log call out to several loggers."""

    def __init__(self, *loggers: MetricLogger) -> None:
        self.loggers = loggers

    def log(self, step: int, **values: float) -> None:
        """Record values at a step on every logger."""
        for logger in self.loggers:
            logger.log(step, **values)


def latest_metrics(*, engine: Engine, job_id: int) -> dict[str, tuple[int, float]]:
    """Each metric's latest (step, value) for a job."""
    with session_scope(engine) as session:
        rows = session.execute(select(Metric).where(col(Metric.job_id) == job_id)
                               .order_by(col(Metric.step))).scalars().all()
        return {m.name: (m.step, m.value) for m in rows}
