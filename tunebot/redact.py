"""Secrets out of text: known values, and anything shaped like a credential.

Used by the log filter (every record of every logger) and wherever text built from a URL or an
exception can reach a reply, a log or a job's stored thread (the OpenAI-compatible backend).
Masking is by shape as well as by value: workspace tokens from OAuth, keys in a URL's userinfo
or query string, and bearer headers are not in the settings, yet must never be shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET = 6  # shorter known values would mask ordinary words
# Query parameters whose values are shown in a redacted URL; every other value is masked.
SAFE_QUERY = frozenset({"api-version", "api_version", "version", "format"})

_SHAPES: list[tuple[re.Pattern[str], str]] = [
    # Slack tokens: xoxb-, xoxp-, xoxa-, xoxr-, xoxe-, rotating xoxe.xoxp-, app-level xapp-.
    (re.compile(r"\b(?:xox[a-z](?:\.xox[a-z])?|xapp)-[A-Za-z0-9][A-Za-z0-9-]*"), MASK),
    # Authorization header values (Basic only after the header's name: it is also a word).
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1" + MASK),
    (re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?\w+\s+)[A-Za-z0-9._~+/=-]+"),
     r"\1" + MASK),
    # OpenAI-style keys (sk-…, sk-proj-…, sk-ant-…).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), MASK),
    # Userinfo of a URL: scheme://user:password@host.
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#'\"<>]+@"), r"\1" + MASK + "@"),
    # Query parameters that carry credentials.
    (re.compile(r"(?i)([?&;](?:api[-_]?key|apikey|key|token|access[-_]?token|refresh[-_]?token|"
                r"id[-_]?token|auth|sig|signature|secret|client[-_]?secret|password|passwd|"
                r"pwd|code)=)[^&\s#'\"<>]+"), r"\1" + MASK),
    # The same names as k=v anywhere in a sentence (log lines, error texts).
    (re.compile(r"(?i)(\b(?:api[-_]?key|apikey|access[-_]?token|refresh[-_]?token|token|"
                r"client[-_]?secret|secret|password)=)[^&\s#'\"<>,;)]+"), r"\1" + MASK),
    # Header lines and JSON/dict items naming a credential: "access_token": "…", api-key: …
    (re.compile(r"(?i)([\"'][\w-]*(?:token|secret|password|passwd|api[-_]?key)[\"']\s*:\s*"
                r"[\"'])[^\"']+"), r"\1" + MASK),
    (re.compile(r"(?i)\b((?:x-)?api-key\s*:\s*)[^\s,;'\"]+"), r"\1" + MASK),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with each known secret (6+ characters) and every credential-shaped value
    replaced by ***."""
    for value in sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len,
                        reverse=True):
        text = text.replace(value, MASK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def url_secrets(url: str | None) -> list[str]:
    """The credentials a URL carries: its userinfo and its query values (safe ones aside)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.username or "", parts.password or ""]
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=False)
              if k.lower() not in SAFE_QUERY]
    return [s for s in found if len(s) >= MIN_SECRET]


def redact_url(url: str) -> str:
    """A URL fit to show: no userinfo, query values masked except SAFE_QUERY ones."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact(url)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = "&".join(f"{k}={v if k.lower() in SAFE_QUERY else MASK}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, "")))
