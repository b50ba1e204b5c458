"""The OpenAI-compatible backend against a local chat-completions server run by the test."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tunebot.errors import JobError
from workers.backends.base import GenParams
from workers.backends.openai_compat import OpenAIBackend, chat_url
from workers.backends.registry import backend_for

KEY = "sk-test-secret-123"


@dataclass
class FakeOpenAI:
    """Answers /v1/chat/completions; `script` holds (status, headers, body) to send first."""

    url: str = ""
    delay: float = 0.0
    script: list[tuple[int, dict[str, str], dict]] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict, auth: str | None) -> tuple[int, dict[str, str], dict]:
        with self.lock:
            self.bodies.append(body)
            self.auth.append(auth)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.pop(0) if self.script else None
        try:
            time.sleep(self.delay)
            if scripted:
                return scripted
            question = body["messages"][-1]["content"]
            reply = {
                "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"echo: {question}"}}],
                "usage": {"prompt_tokens": 10 + len(question), "completion_tokens": 3,
                          "total_tokens": 13 + len(question)},
            }
            return 200, {}, reply
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            assert self.path == "/v1/chat/completions"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, headers, payload = fake.answer(body, self.headers.get("Authorization"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def make(server: FakeOpenAI, **kw: object) -> OpenAIBackend:
    opts: dict = {"concurrency": 2, "timeout": 5.0, "backoff": 0.01}
    opts.update(kw)
    return OpenAIBackend("local-model", server.url, KEY, **opts)


def test_answers_in_order_with_usage_and_params(server: FakeOpenAI) -> None:
    backend = make(server)
    params = GenParams(temperature=0.3, top_p=0.9, max_new_tokens=7, stop=("\n",), seed=5)
    outs = backend.generate([chat("a"), chat("bb"), chat("ccc")], params)
    assert [g.text for g in outs] == ["echo: a", "echo: bb", "echo: ccc"]
    assert [(g.tokens_in, g.tokens_out) for g in outs] == [(11, 3), (12, 3), (13, 3)]
    assert all(g.latency_ms > 0 and g.extra["retries"] == 0 for g in outs)
    sent = sorted(server.bodies, key=lambda b: b["messages"][-1]["content"])
    assert sent[0] == {"model": "local-model", "messages": chat("a"), "temperature": 0.3,
                       "top_p": 0.9, "max_tokens": 7, "stop": ["\n"], "seed": 5}
    assert sorted(b["seed"] for b in sent) == [5, 6, 7]
    assert set(server.auth) == {f"Bearer {KEY}"}
    assert backend.name == "openai:local-model" and KEY not in repr(backend)


def test_stop_strings_are_also_cut_locally(server: FakeOpenAI) -> None:
    outs = make(server).generate([chat("one. two")], GenParams(stop=("two",)))
    assert outs[0].text == "echo: one. "


def test_429_with_retry_after_is_retried(server: FakeOpenAI) -> None:
    server.script = [(429, {"Retry-After": "0.3"}, {"error": {"message": "slow down"}})]
    t0 = time.perf_counter()
    outs = make(server, concurrency=1).generate([chat("x")], GenParams())
    assert time.perf_counter() - t0 >= 0.3  # waited what the server asked
    assert outs[0].text == "echo: x" and outs[0].extra["retries"] == 1
    assert len(server.bodies) == 2


def test_500_is_retried_with_backoff(server: FakeOpenAI) -> None:
    server.script = [(500, {}, {"error": "boom"}), (503, {}, {"error": "busy"})]
    outs = make(server, concurrency=1).generate([chat("y")], GenParams())
    assert outs[0].text == "echo: y" and outs[0].extra["retries"] == 2


def test_gives_up_after_max_retries(server: FakeOpenAI) -> None:
    server.script = [(502, {}, {"error": "bad gateway"})] * 3
    with pytest.raises(JobError, match=r"HTTP 502 \(gave up after 3 attempts\)"):
        make(server, concurrency=1, max_retries=2).generate([chat("z")], GenParams())


def test_client_errors_are_not_retried(server: FakeOpenAI,
                                       caplog: pytest.LogCaptureFixture) -> None:
    server.script = [(401, {}, {"error": {"message": "invalid api key"}})]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(JobError, match="HTTP 401.*invalid api key.*TUNEBOT_OPENAI_API_KEY") as e:
        make(server).generate([chat("z")], GenParams())
    assert len(server.bodies) == 1
    assert KEY not in str(e.value) and KEY not in caplog.text


def test_unreachable_endpoint() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend("m", f"http://127.0.0.1:{port}/v1", KEY, backoff=0.01,
                            max_retries=1)
    with pytest.raises(JobError,
                       match=f"cannot reach the OpenAI-compatible endpoint at http://127.0.0.1:{port}"):
        backend.generate([chat("x")], GenParams())


def test_concurrency_bound(server: FakeOpenAI) -> None:
    server.delay = 0.15
    outs = make(server, concurrency=3).generate([chat(str(i)) for i in range(9)], GenParams())
    assert [g.text for g in outs] == [f"echo: {i}" for i in range(9)]
    assert server.max_in_flight == 3


def test_timeout_is_a_job_error(server: FakeOpenAI) -> None:
    server.delay = 1.0
    with pytest.raises(JobError, match="timed out after 0.2 s"):
        make(server, timeout=0.2, max_retries=0).generate([chat("x")], GenParams())


def test_registry_builds_it_from_settings(server: FakeOpenAI, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, openai_base_url=server.url + "/v1", openai_api_key=KEY,
                             openai_concurrency=5)
    backend = backend_for("openai:local-model", settings)
    assert isinstance(backend, OpenAIBackend) and backend.concurrency == 5
    assert backend.generate([chat("hi")], GenParams())[0].text == "echo: hi"
    with pytest.raises(JobError, match="TUNEBOT_OPENAI_BASE_URL"):
        backend_for("openai:local-model", make_settings(tmp_path))


@pytest.mark.parametrize("base", ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"])
def test_chat_url(base: str) -> None:
    assert chat_url(base) == "http://h:1/v1/chat/completions"


def test_llm_judge_scores_through_the_openai_backend(server: FakeOpenAI) -> None:
    from workers.scoring import ScoreContext, score_case

    server.script = [(200, {}, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Score: 5 — polite and correct."}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 6}}),
        (200, {}, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Score: 1"}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2}})]
    ctx = ScoreContext(judge_backend=make(server), input_text="Where is my order?")
    spec = [{"type": "llm-judge", "rubric": "polite and answers the question"}]
    good = score_case("It ships tomorrow, sorry for the wait!", "ships tomorrow", None, spec, ctx)
    bad = score_case("Figure it out.", "ships tomorrow", None, spec, ctx)
    assert good[0].passed is True and good[0].value == 1.0
    assert bad[0].passed is False and bad[0].value == 0.0
    judged = server.bodies[0]["messages"][-1]["content"]
    assert "polite and answers the question" in judged and "It ships tomorrow" in judged


def test_on_batch_hears_answers_as_they_arrive(server: FakeOpenAI,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.backends import openai_compat

    monkeypatch.setattr(openai_compat, "REPORT_EVERY", 3)
    heard: list[list[int]] = []
    prompts = [chat(str(i)) for i in range(7)]
    outs = make(server, concurrency=3).generate(
        prompts, GenParams(), on_batch=lambda idx, gens: heard.append(list(idx)))
    assert [len(h) for h in heard] == [3, 3, 1]
    assert sorted(i for h in heard for i in h) == list(range(7))
    assert [g.text for g in outs] == [f"echo: {i}" for i in range(7)]
