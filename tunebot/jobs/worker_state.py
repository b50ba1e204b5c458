"""Per-process state of a worker: engine and sender built once after fork, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.engine import Engine

from tunebot.db import make_engine
from tunebot.jobs.queue import Sender
from tunebot.settings import Settings


@dataclass
class ProcessState:
    """The engine and sender of one OS process."""

    pid: int
    settings: Settings
    engine: Engine
    sender: Sender


_STATE: ProcessState | None = None


def process_state(app: Celery) -> ProcessState:
    """This process's state, rebuilt after a fork (engines must not cross processes)."""
    global _STATE
    if _STATE is None or _STATE.pid != os.getpid():
        settings: Settings = app.tunebot_settings
        _STATE = ProcessState(os.getpid(), settings, make_engine(settings.database_url),
                              Sender(app))
    return _STATE
