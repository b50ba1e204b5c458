"""The same slash command through Socket Mode: envelope in, ack with the answer out, one job."""

from __future__ import annotations

import threading

from slack_bolt.adapter.socket_mode import SocketModeHandler

from bot.app import build_bolt
from devtools.slack_api.payloads import (
    app_mention_event,
    event_envelope,
    slash_command_fields,
    socket_envelope,
)
from tests.bot.conftest import Stack
from tests.bot.test_slack_e2e import job_count, wait_root_final


def test_slash_command_and_retried_event_over_socket_mode(stack: Stack) -> None:
    bolt = build_bolt(stack.settings, stack.core)
    handler = SocketModeHandler(bolt, "xapp-test")
    thread = threading.Thread(target=handler.connect, daemon=True)
    thread.start()
    try:
        stack.slack.wait_socket_connected(timeout=15)
        fields = slash_command_fields("ping seconds=0.2", command="/tunebot",
                                      trigger_id="9.9.socket")
        env_id = stack.slack.socket_send(socket_envelope(fields, "slash_commands"))
        ack = stack.slack.wait_socket_ack(env_id, timeout=15)
        assert ack.payload is not None and "Queued" in ack.payload["text"]
        wait_root_final(stack)
        # An events_api redelivery (retry_attempt 1) of the same event_id makes no second job.
        event = event_envelope(app_mention_event("<@U0BOT> tunebot ping"), event_id="EvSOCK1")
        for attempt in (0, 1):
            eid = stack.slack.socket_send(socket_envelope(event, retry_attempt=attempt,
                                                          retry_reason="timeout" if attempt
                                                          else ""))
            stack.slack.wait_socket_ack(eid, timeout=15)
        stack.slack.wait_for(lambda: job_count(stack) == 2 or None, timeout=15)
        assert job_count(stack) == 2
    finally:
        handler.close()


def test_form_errors_and_buttons_over_socket_mode(stack: Stack) -> None:
    from devtools.slack_api.payloads import block_actions_payload, view_submission_payload
    from tests.bot.conftest import SocketClient
    from tests.bot.test_modals import GOOD, values

    client = SocketClient(stack)
    try:
        assert client.slash("new", command="/prompt") == {}  # the form answers, not the ack
        view_id = stack.slack.wait_for(lambda: next(
            (c.args.get("view_id") for c in stack.slack.calls_for("views.update")), None),
            timeout=15)
        view = stack.slack.views[view_id]

        def submit(fields: dict) -> dict:
            return client.interactive(view_submission_payload(
                values(fields), callback_id=view["callback_id"],
                private_metadata=view["private_metadata"], view_id=view["id"]))

        answer = submit(dict(GOOD, max_new_tokens="0"))
        assert answer["response_action"] == "errors"
        assert "between 1 and 4096" in answer["errors"]["max_new_tokens"]
        assert submit(GOOD) == {}
        stack.slack.wait_for(lambda: any("saved *tone-check@1*" in m.get("text", "")
                                         for m in stack.slack.messages("C0CHANNEL")) or None,
                             timeout=15)
        # A button over the socket: Re-run of a finished ping.
        job = client.slash("ping", command="/tunebot")
        assert "Queued" in job["text"]
        wait_root_final(stack)
        message = stack.slack.wait_for(lambda: next(
            (m for m in stack.slack.messages("C0CHANNEL")
             if any(b.get("type") == "actions" for b in m.get("blocks") or [])
             and m.get("thread_ts") != m.get("ts")), None), timeout=20)
        client.interactive(block_actions_payload("job_rerun", "1", message=message))
        stack.slack.wait_for(lambda: job_count(stack) == 2 or None, timeout=15)
    finally:
        client.close()
