"""The fake Slack server, exercised through the real slack_sdk clients."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from slack_bolt import Ack, App, Respond, Say
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.request.internals import parse_body
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.webhook import WebhookClient

from devtools.slack_api import payloads
from devtools.slack_api.server import SlackAPIServer

BOT, APP, SECRET = "xoxb-test", "xapp-test", "s3cret"
# shared/slack-payloads/slash_command.form, byte for byte.
SLASH_FORM = (
    b"token=fakeVerificationToken000&team_id=T0TEAM&team_domain=fakeco&channel_id=C0CHANNEL"
    b"&channel_name=bot-testing&user_id=U0ALICE&user_name=alice&command=%2Fvalidate"
    b"&text=nightly-export.jsonl+--strict&api_app_id=A0APP&is_enterprise_install=false"
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT0TEAM%2F1000000000001"
    b"%2FFakeResponseUrlSecret0001&trigger_id=1000000000001.1000000001"
    b".fedcba9876543210fedcba9876543210"
)
README_SIGNATURE = "v0=999988b307161c8b6c212f8bfc85eff82f0201beb0ee75b61b45d761a52180bf"


@pytest.fixture
def slack() -> Iterator[SlackAPIServer]:
    with SlackAPIServer(bot_token=BOT, app_token=APP, signing_secret=SECRET) as server:
        yield server


@pytest.fixture
def client(slack: SlackAPIServer) -> WebClient:
    return WebClient(token=BOT, base_url=slack.api_url)


def _error(excinfo: pytest.ExceptionInfo[SlackApiError]) -> str:
    return str(excinfo.value.response["error"])


def _get(url: str, token: str | None = None) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", parts.path, headers=headers)
    return conn.getresponse()


# ---- messages --------------------------------------------------------------------------


def test_post_message_and_threaded_reply(slack: SlackAPIServer, client: WebClient) -> None:
    root = client.chat_postMessage(channel="C0CHANNEL", text="🧪 #14 queued")
    reply = client.chat_postMessage(channel="C0CHANNEL", text="32/64 done", thread_ts=root["ts"])

    assert root["ok"] and root["channel"] == "C0CHANNEL"
    assert root["message"]["ts"] == root["ts"] and root["message"]["bot_id"] == "B0BOT"
    assert "thread_ts" not in root["message"]
    assert reply["message"]["thread_ts"] == root["ts"]
    assert reply["message"]["parent_user_id"] == "U0BOT"
    assert float(reply["ts"]) > float(root["ts"])
    assert [m["text"] for m in slack.messages("C0CHANNEL")] == ["🧪 #14 queued", "32/64 done"]
    assert [m["text"] for m in slack.thread("C0CHANNEL", root["ts"])] == ["32/64 done"]
    calls = slack.calls_for("chat.postMessage")
    assert [c.ts for c in calls] == [root["ts"], reply["ts"]]
    assert calls[1].args["thread_ts"] == root["ts"] and calls[1].token == BOT


def test_blocks_sent_as_json_string_are_decoded(slack: SlackAPIServer, client: WebClient) -> None:
    blocks = [{"type": "section", "block_id": "b", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    client.chat_postMessage(channel="C0CHANNEL", text="hi", blocks=blocks)

    assert slack.calls[0].args["blocks"] == blocks
    assert slack.messages("C0CHANNEL")[0]["blocks"] == blocks


def test_invalid_blocks_are_rejected(slack: SlackAPIServer, client: WebClient) -> None:
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0CHANNEL", text="x", blocks=too_long)

    assert _error(excinfo) == "invalid_blocks"
    assert slack.calls == []


def test_update_is_applied_to_the_recorded_message(
    slack: SlackAPIServer, client: WebClient
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "running"}}]
    root = client.chat_postMessage(channel="C0CHANNEL", text="running 40%", blocks=blocks)

    updated = client.chat_update(channel="C0CHANNEL", ts=root["ts"], text="✅ done")

    assert updated["ts"] == root["ts"] and updated["text"] == "✅ done"
    assert "ts" not in updated["message"] and updated["message"]["text"] == "✅ done"
    [message] = slack.messages("C0CHANNEL")
    assert message["text"] == "✅ done" and message["blocks"] == blocks
    assert slack.calls_for("chat.update")[0].ts == root["ts"]


def test_update_of_unknown_ts_is_rejected(slack: SlackAPIServer, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C0CHANNEL", ts="1767225600.000100", text="x")

    assert _error(excinfo) == "message_not_found"
    assert slack.calls == [] and slack.rejected[0].error == "message_not_found"


def test_ephemeral_returns_only_message_ts(slack: SlackAPIServer, client: WebClient) -> None:
    answer = client.chat_postEphemeral(channel="C0CHANNEL", user="U0ALICE", text="Queued #14")

    assert set(answer.data) == {"ok", "message_ts"}  # type: ignore[arg-type]
    [eph] = slack.ephemerals(user="U0ALICE")
    assert eph["text"] == "Queued #14" and eph["ts"] == answer["message_ts"]
    assert slack.messages("C0CHANNEL") == []


def test_posting_to_a_user_goes_to_their_dm(slack: SlackAPIServer, client: WebClient) -> None:
    answer = client.chat_postMessage(channel="U0ALICE", text="psst")

    assert answer["channel"] == "D0ALICEDM"
    assert [m["text"] for m in slack.messages("D0ALICEDM")] == ["psst"]


@pytest.mark.parametrize(
    ("method", "args", "error"),
    [
        ("chat.postMessage", {"channel": "C0CHANNEL"}, "no_text"),
        ("chat.postMessage", {"text": "hi"}, "channel_not_found"),
        ("chat.postMessage", {"channel": "#nowhere", "text": "hi"}, "channel_not_found"),
        ("chat.update", {"channel": "C0CHANNEL", "text": "hi"}, "invalid_arguments"),
        ("chat.postEphemeral", {"channel": "C0CHANNEL", "text": "hi"}, "invalid_arguments"),
        ("files.getUploadURLExternal", {"filename": "a.txt"}, "invalid_arguments"),
        ("files.completeUploadExternal", {"files": '[{"id": "F1"}]'}, "file_not_found"),
        ("views.open", {"view": '{"type": "modal"}'}, "invalid_arguments"),
        ("views.update", {"view": '{"type": "modal"}'}, "invalid_arguments"),
        ("views.publish", {"view": '{"type": "home"}'}, "invalid_arguments"),
        ("users.info", {"user": "U0NOBODY"}, "user_not_found"),
        ("files.info", {"file": "F0NONE"}, "file_not_found"),
        ("usergroups.users.list", {"usergroup": "S0NONE"}, "no_such_subteam"),
        ("reactions.add", {"name": "eyes"}, "unknown_method"),
    ],
)
def test_missing_or_bad_arguments_are_rejected_and_not_recorded(
    slack: SlackAPIServer, client: WebClient, method: str, args: dict[str, str], error: str
) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call(method, params=args)

    assert excinfo.value.response.status_code == 200
    assert _error(excinfo) == error
    assert slack.calls == []
    assert [(r.method, r.error) for r in slack.rejected] == [(method, error)]


@pytest.mark.parametrize(
    ("token", "error"),
    [(None, "not_authed"), ("xoxb-wrong", "invalid_auth"), (APP, "not_allowed_token_type")],
)
def test_calls_need_the_bot_token(slack: SlackAPIServer, token: str | None, error: str) -> None:
    bad = WebClient(token=token, base_url=slack.api_url)
    with pytest.raises(SlackApiError) as excinfo:
        bad.chat_postMessage(channel="C0CHANNEL", text="hi")

    assert _error(excinfo) == error
    assert slack.calls == [] and slack.messages("C0CHANNEL") == []


def test_token_in_form_body_is_accepted(slack: SlackAPIServer) -> None:
    anonymous = WebClient(base_url=slack.api_url)
    anonymous.api_call(
        "chat.postMessage", params={"token": BOT, "channel": "C0CHANNEL", "text": "legacy"}
    )

    assert slack.calls[0].token == BOT and "token" not in slack.calls[0].args


def test_json_bodies_are_accepted(slack: SlackAPIServer, client: WebClient) -> None:
    client.api_call("chat.postMessage", json={"channel": "C0CHANNEL", "text": "as json"})
    slack.clear_records()
    client.api_call("chat.postMessage", json={"channel": "C0CHANNEL", "text": "again"})

    assert [c.args["text"] for c in slack.calls] == ["again"]
    assert [m["text"] for m in slack.messages("C0CHANNEL")] == ["as json", "again"]


# ---- failures and retries --------------------------------------------------------------


def test_rate_limited_calls_are_retried_and_delivered_once(slack: SlackAPIServer) -> None:
    retrying = WebClient(
        token=BOT,
        base_url=slack.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack.fail_next(2, status=429)

    answer = retrying.chat_postMessage(channel="C0CHANNEL", text="once")

    assert answer["ok"]
    assert [m["text"] for m in slack.messages("C0CHANNEL")] == ["once"]
    assert len(slack.calls) == 1
    assert [(r.status, r.error) for r in slack.rejected] == [(429, "ratelimited")] * 2


def test_rate_limit_answer_carries_retry_after(slack: SlackAPIServer, client: WebClient) -> None:
    slack.fail_next(1, status=429, methods=["chat.postMessage"])
    client.auth_test()  # other methods are not affected

    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0CHANNEL", text="hi")

    response = excinfo.value.response
    assert response.status_code == 429 and response["error"] == "ratelimited"
    assert response.headers["Retry-After"] in ("1", ["1"])
    assert [c.method for c in slack.calls] == ["auth.test"]


def test_fail_for_answers_server_errors_for_a_while(
    slack: SlackAPIServer, client: WebClient
) -> None:
    slack.fail_for(0.3, status=500)
    with pytest.raises(SlackApiError) as excinfo:
        client.auth_test()
    assert excinfo.value.response.status_code == 500

    time.sleep(0.35)
    assert client.auth_test()["user_id"] == "U0BOT"
    assert len(slack.calls) == 1


def test_error_next_answers_ok_false(slack: SlackAPIServer, client: WebClient) -> None:
    slack.error_next("chat.postMessage", "not_in_channel")

    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0CHANNEL", text="hi")

    assert _error(excinfo) == "not_in_channel"
    assert client.chat_postMessage(channel="C0CHANNEL", text="hi")["ok"]


# ---- files -----------------------------------------------------------------------------


def test_files_upload_v2_into_a_thread_records_the_bytes(
    slack: SlackAPIServer, client: WebClient
) -> None:
    root = client.chat_postMessage(channel="C0CHANNEL", text="loss curve coming")
    content = b'{"step": 20, "loss": 1.92}\n'

    answer = client.files_upload_v2(
        content=content,
        filename="loss.jsonl",
        title="Loss",
        channel="C0CHANNEL",
        thread_ts=root["ts"],
        initial_comment="here it is",
    )

    assert answer["file"]["title"] == "Loss" and answer["file"]["shares"] == {}
    [uploaded] = slack.files
    assert (uploaded.filename, uploaded.title, uploaded.content) == ("loss.jsonl", "Loss", content)
    assert (uploaded.channel, uploaded.thread_ts) == ("C0CHANNEL", root["ts"])
    assert [f.id for f in slack.files_in("C0CHANNEL", root["ts"])] == [uploaded.id]
    [share] = slack.thread("C0CHANNEL", root["ts"])
    assert share["text"] == "here it is" and share["files"][0]["id"] == uploaded.id
    info = client.files_info(file=uploaded.id)
    assert info["file"]["channels"] == ["C0CHANNEL"]
    assert slack.file_content(uploaded.id) == content


def test_upload_url_answers_ok_with_length(slack: SlackAPIServer, client: WebClient) -> None:
    issued = client.files_getUploadURLExternal(filename="a.txt", length=5)
    parts = urlsplit(issued["upload_url"])
    assert parts.hostname == "127.0.0.1"

    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("POST", parts.path, body=b"hello")
    reply = conn.getresponse()

    assert reply.status == 200 and reply.read() == b"OK - 5"


def test_complete_needs_the_bytes_uploaded_first(slack: SlackAPIServer, client: WebClient) -> None:
    issued = client.files_getUploadURLExternal(filename="a.txt", length=5)

    with pytest.raises(SlackApiError) as excinfo:
        client.files_completeUploadExternal(files=[{"id": issued["file_id"]}])

    assert _error(excinfo) == "file_not_found"
    assert slack.files == []


def test_private_download_needs_the_bot_token(slack: SlackAPIServer) -> None:
    shared = slack.add_file(
        "triage-train.jsonl",
        b'{"text": "hi"}\n',
        channel="C0CHANNEL",
        thread_ts="1767225600.000100",
    )
    url = shared["url_private_download"]
    assert url.startswith(slack.base_url + "files-pri/")
    assert shared["shares"]["public"]["C0CHANNEL"][0]["thread_ts"] == "1767225600.000100"

    with_token = _get(url, BOT)
    assert with_token.status == 200 and with_token.read() == b'{"text": "hi"}\n'
    without = _get(url)
    assert without.status == 302 and "/signin" in without.getheader("Location", "")
    assert _get(url, "xoxb-wrong").status == 302
    assert [(d.token, d.ok) for d in slack.downloads] == [
        (BOT, True),
        (None, False),
        ("xoxb-wrong", False),
    ]


def test_add_file_variants(slack: SlackAPIServer, client: WebClient) -> None:
    untrusted = slack.add_file("a.csv", b"a,b\n", host_ok=False)
    stub = slack.add_file("b.jsonl", b"{}\n", stub=True)

    assert urlsplit(untrusted["url_private_download"]).hostname == "localhost"
    assert untrusted["filetype"] == "csv"
    assert stub["file_access"] == "check_file_info" and "url_private" not in stub
    assert client.files_info(file=stub["id"])["file"]["name"] == "b.jsonl"


# ---- views, users, oauth ---------------------------------------------------------------


def test_views_open_update_and_publish(slack: SlackAPIServer, client: WebClient) -> None:
    modal = {
        "type": "modal",
        "callback_id": "review_form",
        "title": {"type": "plain_text", "text": "Review"},
        "blocks": [],
    }
    opened = client.views_open(trigger_id="1.2.abc", view=modal)["view"]
    assert opened["callback_id"] == "review_form" and opened["root_view_id"] == opened["id"]

    updated = client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal)["view"]
    assert updated["id"] == opened["id"]
    with pytest.raises(SlackApiError) as excinfo:
        client.views_update(view_id=opened["id"], hash="0.stale", view=modal)
    assert _error(excinfo) == "hash_conflict"

    home = client.views_publish(user_id="U0ALICE", view={"type": "home", "blocks": []})["view"]
    assert home["type"] == "home" and home["close"] is None
    assert slack.home_views["U0ALICE"]["id"] == home["id"]


def test_lookups(slack: SlackAPIServer, client: WebClient) -> None:
    slack.usergroups["S0ADMINS"] = ["U0ALICE"]
    slack.add_channel("C0PRIVATE", "secret", is_member=False)

    assert client.users_info(user="U0ALICE")["user"]["name"] == "alice"
    assert client.conversations_info(channel="C0CHANNEL")["channel"]["name"] == "bot-testing"
    assert client.usergroups_users_list(usergroup="S0ADMINS")["users"] == ["U0ALICE"]
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0PRIVATE", text="hi")
    assert _error(excinfo) == "not_in_channel"


def test_oauth_install_issues_a_working_bot_token(slack: SlackAPIServer) -> None:
    slack.add_oauth_code("code-1", team_id="T0OTHER", team="Other Co")
    anonymous = WebClient(base_url=slack.api_url)

    install = anonymous.oauth_v2_access(
        client_id=slack.client_id, client_secret=slack.client_secret, code="code-1"
    )

    assert install["access_token"].startswith("xoxb-")
    assert install["team"] == {"id": "T0OTHER", "name": "Other Co"}
    assert install["authed_user"]["id"] == "U0ALICE"
    installed = WebClient(token=install["access_token"], base_url=slack.api_url)
    assert installed.auth_test()["team_id"] == "T0OTHER"
    with pytest.raises(SlackApiError) as excinfo:
        anonymous.oauth_v2_access(
            client_id=slack.client_id, client_secret=slack.client_secret, code="code-1"
        )
    assert _error(excinfo) == "invalid_code"


def test_response_url_records_posts(slack: SlackAPIServer) -> None:
    url = slack.response_url()

    answer = WebhookClient(url).send(text="Queued #14", response_type="ephemeral")

    assert answer.status_code == 200
    assert slack.responses_for(url) == [{"text": "Queued #14", "response_type": "ephemeral"}]


# ---- Socket Mode -----------------------------------------------------------------------


def test_socket_mode_envelope_is_delivered_and_acked(slack: SlackAPIServer) -> None:
    socket_client = SocketModeClient(app_token=APP, web_client=WebClient(base_url=slack.api_url))
    received: list[SocketModeRequest] = []

    def listener(sm: SocketModeClient, req: SocketModeRequest) -> None:
        received.append(req)
        sm.send_socket_mode_response(
            SocketModeResponse(envelope_id=req.envelope_id, payload={"text": "Validating..."})
        )

    socket_client.socket_mode_request_listeners.append(listener)  # type: ignore[arg-type]
    socket_client.connect()
    try:
        slack.wait_socket_connected(5)
        fields = payloads.slash_command_fields("test triage on triage-eval")
        envelope_id = slack.socket_send(payloads.socket_envelope(fields, "slash_commands"))

        ack = slack.wait_socket_ack(envelope_id, 5)
    finally:
        socket_client.close()

    assert ack.payload == {"text": "Validating..."}
    assert received[0].type == "slash_commands"
    assert received[0].payload["text"] == "test triage on triage-eval"
    [opened] = slack.calls_for("apps.connections.open")
    assert opened.token == APP


def test_bolt_socket_mode_app_acks_says_and_responds(slack: SlackAPIServer) -> None:
    app = App(client=WebClient(token=BOT, base_url=slack.api_url), signing_secret=SECRET)

    @app.command("/prompt")
    def prompt(ack: Ack, command: dict[str, str], say: Say, respond: Respond) -> None:
        ack(text="Queued prompt test #14")
        say(text="🧪 #14 running", channel=command["channel_id"])
        respond(text="see the thread")

    handler = SocketModeHandler(app, app_token=APP)
    handler.connect()
    try:
        slack.wait_socket_connected(5)
        url = slack.response_url()
        fields = payloads.slash_command_fields("test triage on triage-eval", response_url=url)
        ack = slack.wait_socket_ack(
            slack.socket_send(payloads.socket_envelope(fields, "slash_commands")), 5
        )
        slack.wait_for(lambda: slack.responses_for(url), 5)
    finally:
        handler.close()

    assert ack.payload == {"text": "Queued prompt test #14"}
    assert [m["text"] for m in slack.messages("C0CHANNEL")] == ["🧪 #14 running"]
    assert slack.responses_for(url) == [{"text": "see the thread"}]


def test_connections_open_needs_the_app_token(slack: SlackAPIServer, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.apps_connections_open(app_token=BOT)

    assert _error(excinfo) == "not_allowed_token_type"
    url = client.apps_connections_open(app_token=APP)["url"]
    assert url.startswith(f"ws://127.0.0.1:{slack.port}/link/?ticket=")


def test_socket_send_without_a_client_fails_loudly(slack: SlackAPIServer) -> None:
    with pytest.raises(RuntimeError):
        slack.socket_send({"type": "events_api", "payload": {}})


# ---- signing and inbound payloads ------------------------------------------------------


def test_signature_matches_the_readme_worked_example() -> None:
    verifier = SignatureVerifier("fake-signing-secret")

    ours = payloads.signature(SLASH_FORM, "fake-signing-secret", 1767225900)

    assert ours == README_SIGNATURE
    assert verifier.generate_signature(timestamp="1767225900", body=SLASH_FORM) == ours


def test_sign_is_accepted_by_slack_sdk_verifier(slack: SlackAPIServer) -> None:
    body = payloads.event_body(payloads.app_mention_event("<@U0BOT> hi"))

    headers = slack.sign(body)

    assert headers["Content-Type"] == "application/json"
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)


def test_signed_headers_carry_retry_headers() -> None:
    headers = payloads.signed_headers(b"{}", SECRET, timestamp=1767225900, retry_num=2)

    assert headers["X-Slack-Retry-Num"] == "2"
    assert headers["X-Slack-Retry-Reason"] == "http_timeout"
    assert headers["X-Slack-Request-Timestamp"] == "1767225900"


def test_slash_command_body_matches_the_fixture_bytes() -> None:
    body = payloads.slash_command_body(
        "nightly-export.jsonl --strict",
        command="/validate",
        trigger_id="1000000000001.1000000001.fedcba9876543210fedcba9876543210",
        response_url=payloads.COMMAND_RESPONSE_URL,
    )

    assert body == SLASH_FORM


def test_inbound_bodies_parse_like_bolt_parses_them() -> None:
    event = parse_body(
        payloads.event_body(
            payloads.app_mention_event("<@U0BOT> go", thread_ts="1767225600.000100"), event_id="Ev1"
        ).decode(),
        "application/json",
    )
    actions = parse_body(
        payloads.block_actions_body(
            "promote", "triage@3", message={"type": "message", "ts": "1.2", "text": ""}
        ).decode(),
        "application/x-www-form-urlencoded",
    )
    submission = parse_body(
        payloads.view_submission_body(
            {"verdict_block": {"verdict_input": "approved"}}, callback_id="review_form"
        ).decode(),
        "application/x-www-form-urlencoded",
    )

    assert event["event_id"] == "Ev1" and event["event"]["thread_ts"] == "1767225600.000100"
    assert actions["actions"][0]["value"] == "triage@3"
    assert actions["container"]["message_ts"] == "1.2"
    values = submission["view"]["state"]["values"]
    assert values["verdict_block"]["verdict_input"]["value"] == "approved"
    assert submission["view"]["callback_id"] == "review_form"


def test_message_event_with_files_is_a_file_share(slack: SlackAPIServer) -> None:
    shared = slack.add_file("data.jsonl", b"{}\n")

    envelope = json.loads(payloads.event_body(payloads.message_event("here", files=[shared])))

    assert envelope["event"]["subtype"] == "file_share"
    assert envelope["context_team_id"] == "T0TEAM"


def test_wait_for_times_out_with_an_assertion(slack: SlackAPIServer) -> None:
    with pytest.raises(AssertionError):
        slack.wait_for(lambda: False, timeout=0.05)
    assert slack.wait_for(lambda: 42, timeout=0.05) == 42
