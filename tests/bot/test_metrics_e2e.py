"""Prometheus metrics scraped after a job: the HTTP bot's /metrics and each worker process's
endpoint (a real `tunebot worker`, its prefork pool in multiprocess mode, and the io worker it
starts beside it on the next port)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devtools.slack_api.payloads import slash_command_body
from tests.bot.conftest import free_port, running_stack
from tests.bot.test_slack_e2e import wait_root_final

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample at a /metrics URL, keyed by name and labels."""
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def worker_urls(log: str) -> list[str]:
    """The metrics URLs the worker processes announced in their log."""
    return re.findall(r"metrics on (http://\S+/metrics)", log)


def test_bot_and_worker_metrics_after_a_job(tmp_path: Path, start_worker,
                                            redis_url: str) -> None:
    port = free_port()
    with running_stack(tmp_path, start_worker, redis_url, metrics_port=port) as stack:
        # The bot's metrics live in this (the test's) process: count from here on.
        before = scrape(f"{stack.bot.base_url}/metrics")
        assert stack.slash("ping seconds=0.2").status_code == 200
        assert stack.slash("test sentiment on", command="/prompt").status_code == 200
        assert stack.post(slash_command_body("ping"), secret="forged").status_code == 401
        root = wait_root_final(stack)
        assert "succeeded" in root["text"]

        after = scrape(f"{stack.bot.base_url}/metrics")

        def bot(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert bot("tunebot_bot_acks_total", family="tunebot", outcome="ok") == 1
        assert bot("tunebot_bot_acks_total", family="prompt", outcome="error") == 1
        assert bot("tunebot_bot_acks_total", outcome="unauthorized") == 1
        assert bot("tunebot_bot_ack_seconds_count") == 3  # the forged one is timed too
        assert 0 < bot("tunebot_bot_ack_seconds_sum", family="tunebot") < 10

        log = (tmp_path / "worker-0.log").read_text()
        urls = worker_urls(log)
        # The inference/gpu worker and its io companion: one port each, from the setting on.
        assert len(urls) == 2 and len(set(urls)) == 2, log[-2000:]
        ports = sorted(int(u.rsplit(":", 1)[1].split("/")[0]) for u in urls)
        assert ports[0] == port and ports[1] < port + 32
        assert all(u.startswith("http://127.0.0.1:") for u in urls)

        def merged() -> Samples:
            out: Samples = {}
            for url in urls:
                for key, v in scrape(url).items():
                    out[key] = out.get(key, 0.0) + v
            return out

        # Delivery of the final event may land a moment after the root message is updated.
        deadline = time.monotonic() + 15
        while True:
            workers = merged()
            if value(workers, "tunebot_delivery_lag_seconds_count", event="final") >= 1:
                break
            assert time.monotonic() < deadline, "no delivery lag recorded"
            time.sleep(0.3)
        # The job ran in a pool child: its counters reach the parent's endpoint via the
        # multiprocess folder.
        assert value(workers, "tunebot_jobs_total", kind="noop", outcome="succeeded") == 1
        assert value(workers, "tunebot_job_duration_seconds_count", kind="noop") == 1
        assert value(workers, "tunebot_job_duration_seconds_sum", kind="noop") >= 0.2
        assert value(workers, "tunebot_job_queue_wait_seconds_count", queue="inference") == 1
        assert value(workers, "tunebot_jobs_running", queue="inference") == 0
        assert value(workers, "tunebot_slack_api_calls_total", method="chat.postMessage") >= 2
        assert value(workers, "tunebot_slack_api_calls_total", method="chat.update") >= 1
        assert value(workers, "tunebot_delivery_failures_total") == 0
        assert value(workers, "tunebot_delivery_lag_seconds_count", event="status") >= 1
