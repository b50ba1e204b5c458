"""The reconciler loop every worker process runs: SQL is the truth, the broker only a wake-up."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from tunebot.jobs import Waker, reconcile

log = logging.getLogger(__name__)


class Reconciler(threading.Thread):
    """Every `interval` seconds: re-queue expired leases, fail spent jobs, re-send lost ones."""

    def __init__(self, engine: Engine, waker: Waker, interval: float) -> None:
        super().__init__(name="tunebot-reconciler", daemon=True)
        self.engine = engine
        self.waker = waker
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Loop until stopped; a failing pass (database down) is logged and retried."""
        while not self._stop_event.wait(self.interval):
            try:
                done = reconcile(self.engine, self.waker, resend_after=max(2 * self.interval, 5))
                if done.requeued or done.failed or done.resent:
                    log.info("reconciler: requeued %s failed %s resent %s",
                             done.requeued, done.failed, done.resent)
            except Exception as exc:
                log.warning("reconciler pass failed (%s); retrying", exc.__class__.__name__)

    def stop(self) -> None:
        """Ask the loop to end."""
        self._stop_event.set()
