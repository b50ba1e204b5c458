"""tunebot/telemetry.py: the metric definitions, the ports a worker claims, the Flower check."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from typer.testing import CliRunner

from tests.conftest import make_settings
from tunebot import telemetry
from tunebot.cli import cli
from tunebot.jobs.queue import make_celery, sends_events


def test_every_metric_is_listed_prefixed_and_labelled() -> None:
    """Workers switch to multiprocess values after import: sound only if no metric made a
    value at import, i.e. every one has labels (an unlabelled one makes its value at once)."""
    defined = [v for v in vars(telemetry).values() if isinstance(v, MetricWrapperBase)]
    assert set(defined) == set(telemetry.ALL) and len(defined) >= 15
    for metric in defined:
        assert metric._name.startswith("tunebot_"), metric._name
        assert metric._labelnames, f"{metric._name} has no labels"
        assert metric._documentation


def test_label_values_stay_bounded() -> None:
    assert telemetry.bounded("noop", {"noop", "prompt_test"}) == "noop"
    assert telemetry.bounded("x" * 500, {"noop"}) == "other"


def test_a_taken_port_moves_the_endpoint_to_the_next_one(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        settings = make_settings(tmp_path, metrics_port=taken)
        endpoint = telemetry.serve_process(settings)
        assert endpoint is not None
        try:
            assert taken < endpoint.port < taken + telemetry.MAX_PORTS
            assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        finally:
            endpoint.close()


def test_port_zero_turns_metrics_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics_port=0)
    assert telemetry.serve_worker(settings) is None
    assert telemetry.serve_process(settings) is None
    assert not (tmp_path / "var" / "metrics").exists()


@pytest.mark.parametrize("bad", ["-1", "70000"])
def test_a_bad_metrics_port_is_named(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOT_METRICS_PORT", bad)
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code in (1, 2)
    assert "TUNEBOT_METRICS_PORT" in str(result.exception) + result.output


def test_task_events_only_on_a_broker_that_carries_them(tmp_path: Path) -> None:
    assert sends_events("redis://127.0.0.1:6379/0") and sends_events("amqp://h//")
    assert not sends_events("sqla+sqlite:///var/broker.db")
    redis_app = make_celery(make_settings(tmp_path, broker_url="redis://127.0.0.1:6379/15"))
    assert redis_app.conf.worker_send_task_events and redis_app.conf.task_send_sent_event
    sql_app = make_celery(make_settings(tmp_path))
    assert not sql_app.conf.worker_send_task_events


def test_flower_on_the_embedded_broker_says_it_needs_redis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOT_VAR_DIR", str(tmp_path / "var"))
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code == 2
    assert "Flower needs a Redis broker" in result.output
    assert "sqla+sqlite:///" in result.output and "sends no task events" in result.output


def test_slack_calls_and_failures_are_counted_by_method() -> None:
    from bot.notifier import MeteredWebClient

    with socket.socket() as s:  # a port nothing listens on: the call fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = MeteredWebClient(token="xoxb-t", base_url=f"http://127.0.0.1:{port}/api/",
                              timeout=2)
    calls = telemetry.SLACK_CALLS.labels("chat.postMessage")
    errors = telemetry.SLACK_ERRORS.labels("chat.postMessage", "transient")
    before = calls._value.get(), errors._value.get()
    with pytest.raises(Exception):  # noqa: B017  # urllib's connection error, whichever
        client.chat_postMessage(channel="C1", text="hi")
    assert (calls._value.get(), errors._value.get()) == (before[0] + 1, before[1] + 1)
    assert MeteredWebClient.like(client).base_url == client.base_url


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist() -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docker/grafana-dashboard.json")
                           .read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total)$", "", m) for e in exprs
            for m in re.findall(r"tunebot_[a-z_]+", e)}
    defined = {m._name for m in telemetry.ALL}
    assert used and used <= defined, used - defined
    assert len(used) >= 10
