"""Jobs: the one job-kind table (kinds), the rows and their state machine (store), each job's
thread of events (events), reconciliation, the Celery queue, and a worker process's state.

The functions most callers need are re-exported here, so `jobs.submit(...)` reads as what it
does; each lives in exactly one module below.
"""

from tunebot.jobs.events import emit, read_events
from tunebot.jobs.kinds import KINDS, JobKind, Waker
from tunebot.jobs.reconcile import Reconciled, reconcile
from tunebot.jobs.store import (
    IllegalTransition,
    LeaseState,
    QuotaExceeded,
    Submitted,
    check_transition,
    finish,
    get,
    list_jobs,
    renew_lease,
    request_cancel,
    set_status,
    submit,
    take_lease,
)

__all__ = [
    "KINDS", "IllegalTransition", "JobKind", "LeaseState", "QuotaExceeded", "Reconciled",
    "Submitted", "Waker", "check_transition", "emit", "finish", "get", "list_jobs",
    "read_events", "reconcile", "renew_lease", "request_cancel", "set_status", "submit",
    "take_lease",
]
