"""A job that does nothing but prove the round trip: bot/CLI → broker → worker → SQL → thread."""

from __future__ import annotations

import time
from typing import Any

from workers.context import JobContext


class NoopRunner:
    """Waits `seconds` (checking for cancel), reporting progress, then answers."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def run(self) -> dict[str, Any]:
        """Sleep in small steps so cancel and lease loss are noticed quickly."""
        seconds = float(self.ctx.job.params.get("seconds", 0))
        steps = max(1, int(seconds / 0.1))
        for i in range(steps):
            self.ctx.check()
            time.sleep(seconds / steps)
            self.ctx.progress((i + 1) / steps, f"{i + 1}/{steps} ticks")
        self.ctx.say("pong — the worker, the broker and SQL are all wired up.")
        return {"pong": True, "seconds": seconds}
