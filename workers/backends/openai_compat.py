"""Any OpenAI-compatible /v1/chat/completions endpoint (vLLM, llama.cpp, Ollama, OpenAI).

The base URL may carry credentials (userinfo, an api-key query parameter) and the endpoint's own
answers may echo them; every text this backend produces — errors that become a job's final
message, log lines — shows the URL redacted and passes through `tunebot.redact`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from tunebot.errors import JobError
from tunebot.redact import redact, redact_url, url_secrets
from workers.backends.base import Generation, GenParams, Message, OnBatch

log = logging.getLogger(__name__)
MAX_STOPS = 4  # the OpenAI API takes at most four stop sequences
REPORT_EVERY, REPORT_SECONDS = 32, 5.0  # on_batch: answers a group, or seconds between groups


def chat_url(base_url: str) -> str:
    """The chat completions URL for a base URL given with or without its /v1; the path is
    joined before any query string (`…/v1?api-version=x` → `…/v1/chat/completions?api-version=x`)
    and userinfo is kept (the backend sends it as HTTP Basic auth, never in a message)."""
    parts = urlsplit(base_url.strip())
    path = parts.path.rstrip("/")
    path = f"{path}/chat/completions" if path.endswith("/v1") else f"{path}/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class OpenAIBackend:
    """Chat completions over HTTP with bounded concurrency, timeouts and retries."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: SecretStr | str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        *,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        key_header: str = "Authorization",
    ) -> None:
        self.name = f"openai:{model}"
        self.model = model
        self._key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(
            api_key
        )
        key = self._key.get_secret_value() if self._key is not None else ""
        self._secrets = [key, *url_secrets(base_url)]
        try:
            full = chat_url(base_url)
            parts = urlsplit(full)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise JobError("TUNEBOT_OPENAI_BASE_URL is not a valid URL "
                           f"({redact(base_url[:200], self._secrets)})") from None
        self.shown = redact_url(full)  # what messages and logs name
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JobError(f"TUNEBOT_OPENAI_BASE_URL must be an http(s) URL (got {self.shown})")
        # Userinfo travels as an auth header, not in the URL httpx would log and echo.
        self._auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or "")) \
            if parts.username or parts.password else None
        self.url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path,
                               parts.query, ""))
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL:
            raise JobError(f"TUNEBOT_OPENAI_BASE_URL is not a valid URL ({self.shown})") from None
        self.key_header = key_header
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, url={self.shown!r})"  # never the key

    def _clean(self, text: str) -> str:
        """Text fit for a reply, a log or a job's thread: no key, no URL credential."""
        return redact(text, self._secrets)

    def generate(self, prompts: list[list[Message]], params: GenParams, *,
                 on_batch: OnBatch | None = None) -> list[Generation]:
        """Answer each prompt, at most `concurrency` requests in flight; on_batch hears the
        answers as they arrive, REPORT_EVERY at a time or every REPORT_SECONDS."""
        if not prompts:
            return []
        headers = {"Content-Type": "application/json"}
        if self._key is not None and self._key.get_secret_value():
            key = self._key.get_secret_value()
            bearer = self.key_header.lower() == "authorization"
            headers[self.key_header] = f"Bearer {key}" if bearer else key
        abort = threading.Event()
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        limits = httpx.Limits(max_connections=self.concurrency)
        with httpx.Client(timeout=timeout, headers=headers, limits=limits,
                          auth=self._auth) as client, \
                ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [
                pool.submit(self._one, client, self._body(i, p, params), params.stop, abort)
                for i, p in enumerate(prompts)
            ]
            try:
                if on_batch is not None:
                    index = {f: i for i, f in enumerate(futures)}
                    ready: list[int] = []
                    told = time.monotonic()
                    for f in as_completed(futures):
                        ready.append(index[f])
                        f.result()  # a failure stops here, before it is reported
                        # Told in groups (each is a database write for a prompt test), and at
                        # least every few seconds while answers trickle in.
                        if len(ready) >= REPORT_EVERY or time.monotonic() - told >= REPORT_SECONDS:
                            on_batch(ready, [futures[i].result() for i in ready])
                            ready, told = [], time.monotonic()
                    if ready:
                        on_batch(ready, [futures[i].result() for i in ready])
                return [f.result() for f in futures]
            except BaseException:
                abort.set()  # the rest give up at their next attempt instead of retrying
                for f in futures:
                    f.cancel()
                raise

    def _body(self, i: int, messages: list[Message], params: GenParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": params.temperature,
            "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop[:MAX_STOPS])
        if params.seed is not None:
            body["seed"] = params.seed + i  # distinct per prompt so repeated prompts differ
        return body

    def _one(self, client: httpx.Client, body: dict[str, Any], stop: tuple[str, ...],
             abort: threading.Event) -> Generation:
        started = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise JobError("cancelled after another request failed")
            t0 = time.perf_counter()
            try:
                resp = client.post(self.url, json=body)
            except httpx.TimeoutException:
                problem = f"the OpenAI-compatible endpoint at {self.shown} timed out after "
                problem, wait = problem + f"{self.timeout:g} s", None
            except httpx.HTTPError as exc:
                # httpx's own text may name the request URL: cleaned like everything else.
                problem = self._clean(f"cannot reach the OpenAI-compatible endpoint at "
                                      f"{self.shown}: {exc}")
                wait = None
            else:
                if resp.status_code < 400:
                    try:
                        return _generation(resp, stop, (time.perf_counter() - t0) * 1000,
                                           attempt, (time.perf_counter() - started) * 1000)
                    except JobError as exc:
                        raise JobError(self._clean(str(exc))) from None
                if resp.status_code != 429 and resp.status_code < 500:
                    raise JobError(self._clean(_refusal(self.shown, resp)))
                problem = f"the endpoint at {self.shown} answered HTTP {resp.status_code}"
                wait = _retry_after(resp.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            delay = wait if wait is not None else self.backoff * 2**attempt * random.uniform(1, 1.5)
            log.warning("%s; retry %d/%d in %.2f s", problem, attempt + 1, self.max_retries, delay)
            time.sleep(min(delay, self.max_wait))
        raise JobError(f"{problem} (gave up after {self.max_retries + 1} attempts)")


def _generation(resp: httpx.Response, stop: tuple[str, ...], latency_ms: float, retries: int,
                wall_ms: float) -> Generation:
    try:
        data = resp.json()
        text = data["choices"][0]["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise JobError(f"the endpoint answered something that is not a chat completion: "
                       f"{resp.text[:200]!r}") from exc
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        text = text[:min(cuts)]
    usage = data.get("usage") or {}
    return Generation(
        text=text, tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or 0), latency_ms=latency_ms,
        extra={"retries": retries, "wall_ms": round(wall_ms, 2), "usage_reported": bool(usage),
               "finish_reason": data["choices"][0].get("finish_reason")},
    )


def _refusal(url: str, resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        detail = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        detail = None
    detail = detail or resp.text[:200] or resp.reason_phrase
    hint = " — check TUNEBOT_OPENAI_API_KEY" if resp.status_code in (401, 403) else ""
    return f"the endpoint at {url} refused the request (HTTP {resp.status_code}): {detail}{hint}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
