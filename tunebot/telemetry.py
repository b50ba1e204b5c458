"""Prometheus metrics: every `tunebot_` metric is defined here, and the servers that expose them.

One module for both sides, since the notifier (bot/) runs on the io worker and the reconciler
(tunebot/jobs/) in every worker: the bot counts acks and Slack Web API calls, the workers jobs,
queue wait, recovered leases, Slack delivery, the model cache and GPU memory.

Workers run Celery's prefork pool, so they use prometheus-client's multiprocess mode: each
`tunebot worker` process claims a port (TUNEBOT_METRICS_PORT, or the next free one of
MAX_PORTS on that bind address), and the port names its directory, VAR/metrics/HOST/PORT,
cleaned before the pool forks; holding the port proves no live process writes there. The
process-wide switch to multiprocess values happens then, which is why every metric here has
labels: a labelled metric makes its values on first use, never at import.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tunebot.settings import Settings

log = logging.getLogger(__name__)

MAX_PORTS = 32  # consecutive ports a worker tries before it runs without a metrics endpoint
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name, read by pool children
CONTENT_TYPE = CONTENT_TYPE_LATEST

# --- the bot -------------------------------------------------------------------------------
ACKS = Counter("tunebot_bot_acks", "Slack requests the bot answered, by command family (or "
               "event, action, view, other) and outcome (ok, error, unavailable, "
               "unauthorized, unhandled, failed)", ["family", "outcome"])
ACK_SECONDS = Histogram("tunebot_bot_ack_seconds", "From a request's arrival to the bot's "
                        "answer (the ack Slack waits 3 s for)", ["family"],
                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10))
# --- Slack's Web API: the bot's listeners and the notifier (io worker) ----------------------
SLACK_CALLS = Counter("tunebot_slack_api_calls", "Slack Web API calls, by method",
                      ["method"])
SLACK_ERRORS = Counter("tunebot_slack_api_errors", "Slack Web API calls that failed, by "
                       "method and kind (permanent, transient, rate_limited)",
                       ["method", "kind"])
SLACK_SECONDS = Histogram("tunebot_slack_api_seconds", "Slack Web API call time (retries "
                          "included), by method", ["method"],
                          buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
# --- workers -------------------------------------------------------------------------------
JOBS = Counter("tunebot_jobs", "Job runs a worker finished, by kind and outcome (succeeded, "
               "failed, cancelled, lease_lost; waiting: parked between stages; skipped: already "
               "taken or final)",
               ["kind", "outcome"])
JOB_SECONDS = Histogram("tunebot_job_duration_seconds", "A job run's time on a worker, by kind",
                        ["kind"], buckets=(.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
                                           3600, 7200, 14400, 43200))
JOBS_RUNNING = Gauge("tunebot_jobs_running", "Jobs running now, by queue", ["queue"],
                     multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("tunebot_job_queue_wait_seconds", "From a job's submission to its first "
                       "start on a worker, by queue", ["queue"],
                       buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
LEASES_RECOVERED = Counter("tunebot_leases_recovered", "Expired leases the reconciler took "
                           "back: the job re-queued, or failed out of attempts", ["outcome"])
DELIVERY_LAG = Histogram("tunebot_delivery_lag_seconds", "From a job event's creation to its "
                         "post in the Slack thread, by event kind", ["event"],
                         buckets=(.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
DELIVERY_FAILURES = Counter("tunebot_delivery_failures", "Failed deliveries of a job's thread "
                            "events, by kind (permanent stops the job's delivery)", ["kind"])
MODEL_CACHE = Counter("tunebot_model_cache", "The warm model cache: hit, load or evict",
                      ["result"])
MODEL_LOAD_SECONDS = Histogram("tunebot_model_load_seconds", "Time to load a model into the "
                               "warm cache, by device", ["device"],
                               buckets=(.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
GPU_MEMORY = Gauge("tunebot_gpu_memory_bytes", "CUDA memory held by worker processes after "
                   "their last job, by device and kind (allocated, reserved)",
                   ["device", "kind"], multiprocess_mode="livesum")

ALL = (ACKS, ACK_SECONDS, SLACK_CALLS, SLACK_ERRORS, SLACK_SECONDS, JOBS, JOB_SECONDS,
       JOBS_RUNNING, QUEUE_WAIT, LEASES_RECOVERED, DELIVERY_LAG, DELIVERY_FAILURES,
       MODEL_CACHE, MODEL_LOAD_SECONDS, GPU_MEMORY)


def bounded(value: str, known: Collection[str], other: str = "other") -> str:
    """A label value from a known set, or `other`: label values never grow without bound."""
    return value if value in known else other


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The text format of this process's metrics (what a /metrics route answers)."""
    return generate_latest(registry)


@dataclass
class Endpoint:
    """A running metrics server: where it listens and, for workers, its multiprocess folder."""

    bind: str
    port: int
    server: Any
    directory: Path | None = None

    @property
    def url(self) -> str:
        """The scrape address."""
        return f"http://{self.bind}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _serve(settings: Settings,
           registry_for: Callable[[int], CollectorRegistry]) -> tuple[int, Any] | None:
    """Serve on TUNEBOT_METRICS_PORT or the next free of MAX_PORTS; None if none is free."""
    first = settings.metrics_port
    for port in range(first, min(first + MAX_PORTS, 65536)):
        try:
            server, _ = start_http_server(port, addr=settings.metrics_bind,
                                          registry=registry_for(port))
        except OSError:  # taken (another worker on this host), or the address is not ours
            continue
        return port, server
    log.warning("no metrics endpoint: ports %d-%d on %s are all taken", first,
                first + MAX_PORTS - 1, settings.metrics_bind)
    return None


def serve_process(settings: Settings) -> Endpoint | None:
    """A single-process server (the bot in Socket Mode): this process's own registry."""
    if settings.metrics_port == 0:
        return None
    served = _serve(settings, lambda _port: REGISTRY)
    if served is None:
        return None
    endpoint = Endpoint(settings.metrics_bind, served[0], served[1])
    log.info("metrics on %s", endpoint.url)
    return endpoint


def multiproc_root(settings: Settings) -> Path:
    """Where workers on this host keep their multiprocess folders (one per port)."""
    return settings.var_dir / "metrics" / socket.gethostname()


def serve_worker(settings: Settings) -> Endpoint | None:
    """Before a worker's pool forks: claim a port, clean the folder it names, switch this
    process (and so its pool children) to multiprocess values, and serve what every process
    of the pool writes there. Never stops a worker: without a port it runs without metrics."""
    if settings.metrics_port == 0:
        return None
    root = multiproc_root(settings)

    def registry_for(port: int) -> CollectorRegistry:
        # Made before the port is known to be free: creating the folder is harmless, only
        # cleaning it waits until the port is ours.
        (root / str(port)).mkdir(parents=True, exist_ok=True)
        registry = CollectorRegistry()
        # prometheus-client's multiprocess helpers carry no annotations
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(root / str(port)))
        return registry

    try:
        served = _serve(settings, registry_for)
    except OSError as exc:  # var/ not writable
        log.warning("no metrics endpoint: cannot use %s (%s)", root, exc)
        return None
    if served is None:
        return None
    port, server = served
    directory = root / str(port)
    # The port is ours, so no live process writes here: what is left is a dead one's.
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    enable_multiprocess(directory)
    for outcome in ("requeued", "failed"):  # this process's reconciler: shown from the start
        LEASES_RECOVERED.labels(outcome)
    endpoint = Endpoint(settings.metrics_bind, port, server, directory)
    log.info("metrics on %s (multiprocess folder %s)", endpoint.url, directory)
    return endpoint


def enable_multiprocess(directory: Path) -> None:
    """Make every metric value created from now on (here and in forked children) a file in
    `directory`. Sound only because no metric here has made a value yet (all are labelled)."""
    os.environ[MULTIPROC_ENV] = str(directory)  # prometheus-client reads it, not tunebot
    _MULTIPROC["dir"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # untyped


_MULTIPROC: dict[str, Path] = {}  # this process's folder; forked pool children inherit it


def mark_dead(pid: int | None = None) -> None:
    """A pool process is ending: drop its live gauges (jobs running, GPU memory)."""
    directory = _MULTIPROC.get("dir")
    if directory is not None:
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]  # untyped
            pid or os.getpid(), str(directory))
