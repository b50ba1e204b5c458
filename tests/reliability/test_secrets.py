"""Credentials stay out of replies, logs and stored events (issue 17, items 8 and 10).

The OpenAI-compatible endpoint's URL carries userinfo and query secrets, its key comes from
TUNEBOT_OPENAI_API_KEY, and the endpoint answers ok, refuses (echoing what it was sent), fails
or answers garbage: prompt tests queued with the CLI and run by the worker's task must show none
of it anywhere, and a base URL with a query string must still reach /v1/chat/completions. Then
a workspace installs the HTTP bot over OAuth with DEBUG logs on (slack_sdk logs the
oauth.v2.access answer, token included), and token-, bearer- and key-shaped values are logged
through slack_sdk, Slack Bolt, Celery and httpx loggers: none may reach the log."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet

from bot.app import build_bolt, http_app
from devtools.slack_api.payloads import app_mention_event, event_body, signed_headers
from devtools.slack_api.server import SlackAPIServer
from tests.bot.conftest import Served
from tests.conftest import make_settings
from tests.reliability.conftest import Report, size
from tests.reliability.inprocess import (
    database_text,
    job_outcome,
    job_thread,
    queued_job,
    run_queued,
    tunebot_cli,
)
from tunebot import migrate
from tunebot.core import build_core
from tunebot.logs import install_log_filter

KEY = "sk-proj-Zq8VtUkey0000000000001"  # TUNEBOT_OPENAI_API_KEY
PASSWORD = "sk-userinfo-pass-7777777"  # in the base URL's userinfo
QUERY = {"api-key": "qk-api-key-5555555", "key": "qk-plain-key-4444444",
         "sig": "qk-signature-3333333", "token": "qk-token-2222222",
         "access_token": "qk-access-1111111"}
MODES = ("ok", "refuse", "busy", "garbage")


class FakeEndpoint:
    """An OpenAI-compatible server that misbehaves by the ticket it is asked about, echoing the
    credentials it received (as real proxies and error pages do)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (path, query, headers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = urlsplit(self.path)
                outer.seen.append((url.path, url.query, dict(self.headers)))
                echo = f"{self.path} {self.headers.get('Authorization')} " \
                       f"{self.headers.get('api-key')}"
                mode = body["messages"][-1]["content"].removeprefix("Ticket: ")
                if url.path != "/v1/chat/completions":
                    status, data, extra = 404, {"error": f"no route {echo}"}, {}
                elif mode == "refuse":
                    status, extra = 401, {}
                    data = {"error": {"message": f"Incorrect API key provided: {echo}"}}
                elif mode == "busy":
                    status, data, extra = 503, {"error": f"busy, sent {echo}"}, {"Retry-After": "0"}
                elif mode == "garbage":
                    status, data, extra = 200, {"html": f"<p>login {echo}</p>"}, {}
                else:
                    status, extra = 200, {}
                    data = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": "x"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
                raw = json.dumps(data).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    """The misbehaving endpoint."""
    fake = FakeEndpoint()
    yield fake
    fake.close()


def base_urls(host: str) -> list[tuple[str, dict[str, Any], str]]:
    """(base URL, extra settings, the query the endpoint must receive) — each spelling of an
    endpoint with credentials in it."""
    q = QUERY
    return [
        (f"http://tb-user:{PASSWORD}@{host}/v1?api-key={q['api-key']}", {},
         f"api-key={q['api-key']}"),
        (f"http://{host}/v1/?api-version=2024-06-01&key={q['key']}&sig={q['sig']}", {},
         f"api-version=2024-06-01&key={q['key']}&sig={q['sig']}"),
        (f"http://tb-user:{PASSWORD}@{host}?token={q['token']}", {}, f"token={q['token']}"),
        (f"http://{host}/v1?access_token={q['access_token']}",
         {"openai_api_key_header": "api-key"}, f"access_token={q['access_token']}"),
    ]


def _secrets() -> list[str]:
    return [KEY, PASSWORD, *QUERY.values()]


def test_endpoint_credentials_never_reach_replies_logs_or_events(
        tmp_path: Path, endpoint: FakeEndpoint, caplog: pytest.LogCaptureFixture,
        report: Report) -> None:
    caplog.set_level(logging.DEBUG)
    urls = base_urls(endpoint.host)[:size(2, 4)]
    shown: list[str] = []
    results: dict[tuple[int, str], tuple[str, str]] = {}
    joined_ok = auth_ok = leaky_jobs = 0
    filters = []
    try:
        for u, (base, extra, query) in enumerate(urls):
            settings = make_settings(tmp_path / f"u{u}", openai_base_url=base,
                                     openai_api_key=KEY, max_jobs_per_user=100_000, **extra)
            filters.append(install_log_filter(settings))  # as `tunebot worker` does at start
            migrate.upgrade(settings.database_url)
            folder = tmp_path / f"catalog{u}"
            (folder / "datasets").mkdir(parents=True)
            (folder / "ask.yaml").write_text(json.dumps({"name": "ask", "versions": [{
                "messages": [{"role": "user", "content": "Ticket: {{ ticket }}"}],
                "variables": {"ticket": "t"}}]}))
            for mode in MODES:
                (folder / "datasets" / f"{mode}.jsonl").write_text(
                    json.dumps({"ticket": mode, "expected": "x"}) + "\n")
            code, out = tunebot_cli(settings, "catalog", "import", str(folder))
            assert code == 0, out
            ids = []
            for mode in MODES:
                code, out = tunebot_cli(settings, "run",
                                        f"/prompt test ask on {mode} model=openai:gpt-test")
                shown.append(out)
                assert code == 0, out
                ids.append(queued_job(out))
            before = len(endpoint.seen)
            run_queued(settings, ids)  # as a worker runs them: by the task's name
            for mode, job_id in zip(MODES, ids, strict=True):
                results[(u, mode)] = job_outcome(settings, job_id)
                thread = job_thread(settings, job_id)
                shown.extend(thread)
                told = " ".join([*thread, results[(u, mode)][1]])
                leaky_jobs += any(secret in told for secret in _secrets())
            shown.append(database_text(settings))
            # Every request went to /v1/chat/completions with the base URL's query intact.
            sent = endpoint.seen[before:]
            joined_ok += all(path == "/v1/chat/completions" and
                             parse_qs(q) == parse_qs(query) for path, q, _ in sent) and bool(sent)
            # The key in its header (userinfo, when given, is HTTP Basic auth, as httpx did).
            header = "api-key" if extra else "Authorization"
            want = KEY if extra else "Basic " if "@" in base else f"Bearer {KEY}"
            auth_ok += all(str(h.get(header)).startswith(want) for _, _, h in sent)
    finally:
        root = logging.getLogger()
        for filt in filters:
            root.removeFilter(filt)
            for h in root.handlers:
                h.removeFilter(filt)
    everything = "\n".join([*shown, caplog.text])
    found = sum(everything.count(s) for s in _secrets())
    expected = {"ok": "succeeded", "refuse": "failed", "busy": "failed", "garbage": "failed"}
    wrong = {k: v for k, v in results.items() if v[0] != expected[k[1]]}
    bad = max(len(wrong), leaky_jobs)
    report.add("17.8 endpoint credentials", "userinfo, api-key/key/sig/token query, bearer "
               "key: ok, 401 echo, 503, garbage", len(results),
               held=len(results) - bad, lost=bad,
               note=f"secrets found in logs/replies/events = {found} ({leaky_jobs} jobs' "
               f"threads); URL joined right "
               f"{joined_ok}/{len(urls)}, key sent right {auth_ok}/{len(urls)}; "
               f"{len(caplog.records)} log records")
    assert found == 0, [s for s in _secrets() if s in everything]
    assert not wrong, wrong
    assert joined_ok == len(urls) and auth_ok == len(urls)
    # The refusal is still useful: it names the endpoint (redacted) and the fix.
    refusal = results[(0, "refuse")][1]
    assert "HTTP 401" in refusal and endpoint.host in refusal and \
        "TUNEBOT_OPENAI_API_KEY" in refusal, refusal


# ---- tokens in logs ----------------------------------------------------------------------

SIGNING = "oauth-signing-secret-17"
BOT = "xoxb-T0OAUTH-4242-workspacebottoken17"
USER = "xoxp-T0OAUTH-1-2-userOAuthToken17"
SHAPED = [
    ("slack_sdk.web.base_client", "response body: %s",
     ({"ok": True, "access_token": "xoxb-1-2-dict-token-aaaa"},)),
    ("slack_bolt.App", "installed with %s and %r", ("xoxp-9-8-7-argtoken-bbbb",
                                                   "xoxe.xoxp-1-rotating-cccc")),
    ("slack_sdk.socket_mode", "app token xapp-1-A0-123-appleveltoken-dddd", ()),
    ("celery.worker", "legacy xoxa-2-legacy-eeee and refresh xoxr-3-refresh-ffff", ()),
    ("celery.app.trace", "Task failed: headers={'Authorization': 'Bearer gho-bearer-gggg99'}",
     ()),
    ("httpx", 'HTTP Request: POST %s "HTTP/1.1 200 OK"',
     ("https://api.example.com/v1/chat?api-key=ak-hhhh-123456&token=tk-iiii-123456",)),
    ("workers.backends.openai_compat", "key %s refused", ("sk-ant-jjjj-1234567890",)),
    ("tunebot.jobs", "notify failed: xoxe-1-kkkk-refresh-token", ()),
]
SHAPED_SECRETS = ["xoxb-1-2-dict-token-aaaa", "xoxp-9-8-7-argtoken-bbbb",
                  "xoxe.xoxp-1-rotating-cccc", "xapp-1-A0-123-appleveltoken-dddd",
                  "xoxa-2-legacy-eeee", "xoxr-3-refresh-ffff", "gho-bearer-gggg99",
                  "ak-hhhh-123456", "tk-iiii-123456", "sk-ant-jjjj-1234567890",
                  "xoxe-1-kkkk-refresh-token"]


def test_workspace_tokens_from_oauth_never_reach_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, report: Report) -> None:
    caplog.set_level(logging.DEBUG)
    with SlackAPIServer(signing_secret=SIGNING) as slack:
        settings = make_settings(
            tmp_path, slack_api_url=slack.api_url, slack_signing_secret=SIGNING,
            slack_client_id=slack.client_id, slack_client_secret=slack.client_secret,
            encryption_key=Fernet.generate_key().decode(), log_level="DEBUG")
        migrate.upgrade(settings.database_url)
        filt = install_log_filter(settings)  # as `tunebot bot` does at start
        core = build_core(settings)
        server = Served(http_app(build_bolt(settings, core)))
        try:
            start = httpx.get(server.base_url + "/slack/install", follow_redirects=False,
                              timeout=10)
            state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
            slack.add_oauth_code("code-17", team_id="T0OAUTH", team="Team 17", bot_token=BOT,
                                 user_token=USER, user_scope="chat:write")
            done = httpx.get(server.base_url + "/slack/oauth_redirect",
                             params={"code": "code-17", "state": state},
                             headers={"Cookie": start.headers["set-cookie"].split(";")[0]},
                             timeout=10)
            body = event_body(app_mention_event("help", team="T0OAUTH"), team_id="T0OAUTH")
            said = httpx.post(server.base_url + "/slack/events", content=body,
                              headers=signed_headers(body, SIGNING), timeout=10)
            deadline = time.monotonic() + 10
            while not slack.calls_for("chat.postMessage") and time.monotonic() < deadline:
                time.sleep(0.1)
            posted = [c.token for c in slack.calls_for("chat.postMessage")]
            for name, msg, args in SHAPED:
                logging.getLogger(name).debug(msg, *args)
        finally:
            server.stop()
            core.engine.dispose()
            root = logging.getLogger()
            root.removeFilter(filt)
            for h in root.handlers:
                h.removeFilter(filt)
    exchanged = list(slack.calls_for("oauth.v2.access"))
    secrets = [BOT, USER, *SHAPED_SECRETS]
    found = [s for s in secrets if s in caplog.text]
    report.add("17.10 tokens in logs", "OAuth install (DEBUG) + token/bearer/key shapes via "
               "slack_sdk, bolt, celery, httpx loggers", len(secrets),
               held=len(secrets) - len(found), lost=len(found),
               note=f"secrets found in logs = {len(found)}; {len(caplog.records)} records; "
               f"install {done.status_code}, event {said.status_code}")
    assert done.status_code == 200 and exchanged and posted == [BOT], (done.text, posted)
    assert said.status_code == 200
    assert "oauth.v2.access" in caplog.text  # slack_sdk's DEBUG dump of the exchange was there
    assert not found, found
