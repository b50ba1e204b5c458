"""The one table of job kinds: each kind's queue, the command it stands for, and its runner.

Read by submission (which queue), the buttons (what a re-run stands for, and its policy) and
the worker (which runner). Runners are named by module path, so the core never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

QUEUES = ("inference", "gpu", "io")


@dataclass(frozen=True)
class JobKind:
    """A kind of job: where it runs and what it is."""

    name: str
    queue: str
    command: tuple[str, str]  # (family, action) of the command it stands for
    runner: str  # "module:Class" of its runner in workers/


KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("noop", "inference", ("tunebot", "ping"), "workers.runners.noop:NoopRunner"),
    JobKind("prompt_test", "inference", ("prompt", "test"),
            "workers.runners.prompt_test:PromptTestRunner"),
    JobKind("prompt_compare", "inference", ("prompt", "compare"),
            "workers.runners.prompt_test:PromptTestRunner"),
    # The production gate for model labels: two adapters paired under one prompt version.
    JobKind("model_compare", "inference", ("model", "label"),
            "workers.runners.prompt_test:PromptTestRunner"),
    JobKind("data_check", "inference", ("dataset", "check"),
            "workers.runners.data_check:DataCheckRunner"),
    JobKind("finetune_estimate", "inference", ("finetune", "estimate"),
            "workers.runners.data_check:DataCheckRunner"),
    JobKind("compare", "inference", ("compare", "vs"), "workers.runners.compare:CompareRunner"),
    # A parent (tunebot/jobs/chain.py): its optimize and fine-tune stages are child jobs.
    JobKind("compare_fair", "inference", ("compare", "fair"),
            "workers.runners.fair:FairRunner"),
    JobKind("finetune", "gpu", ("finetune", "start"), "workers.runners.finetune:FinetuneRunner"),
    JobKind("prompt_optimize", "inference", ("prompt", "optimize"),
            "workers.runners.optimize:OptimizeRunner"),
    JobKind("watch_run", "inference", ("watch", "set"), "workers.runners.watch:WatchRunner"),
)}


class Waker(Protocol):
    """What submission and reconciliation need from the queue: wake workers by name."""

    def send_job(self, job_id: int, queue: str) -> None: ...  # noqa: D102

    def send_notify(self, job_id: int) -> None: ...  # noqa: D102
