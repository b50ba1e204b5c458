"""Logging that never shows a secret: Slack tokens, the signing and client secrets, API keys.

Known values (the settings' own secrets, credentials in the OpenAI base URL) and anything
shaped like one (workspace tokens from OAuth, `Bearer …`, `sk-…`, `api-key=`/`token=` values,
a URL's userinfo) are masked in every record: its message and arguments, its traceback and stack
text. The masking runs where records are made (a log-record factory), so it covers every logger
— slack_sdk's DEBUG dump of an `oauth.v2.access` answer, Celery's, httpx's — and every handler,
including those installed after start; the filter also sits on the handlers present.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tunebot.redact import MIN_SECRET, redact, url_secrets
from tunebot.settings import Settings

# Loggers whose handlers get the filter too (records made elsewhere, e.g. rebuilt by
# logging.makeLogRecord, pass through handlers but not through the factory).
NOISY = ("slack_sdk", "slack_bolt", "celery", "celery.task", "celery.worker", "kombu",
         "httpx", "httpcore", "urllib3", "uvicorn", "uvicorn.error", "uvicorn.access")
# Every secret any installed filter knows, for the record factory; replaced whole (never
# changed in place) so that a record made on another thread never sees it half-updated.
_KNOWN: tuple[str, ...] = ()
_LOCK = threading.Lock()


def mask_record(record: logging.LogRecord, secrets: Iterable[str]) -> None:
    """Rewrite a record in place so that no secret shows in its message, traceback or stack."""
    try:
        msg = record.getMessage()
    except Exception:  # a malformed record: leave it to the handler's own error path
        return
    clean = redact(msg, secrets)
    if clean != msg:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        # Formatted now, masked, and cached where every Formatter looks for it first.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, secrets)


class TokenFilter(logging.Filter):
    """Masks each known secret, and anything shaped like a token or key, in every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len,
                              reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message (arguments merged in) with secrets replaced."""
        mask_record(record, self.secrets)
        return True


def secrets_of(settings: Settings) -> list[str]:
    """The secret values these settings hold, the OpenAI base URL's credentials included."""
    values = [settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret,
              settings.slack_client_secret, settings.openai_api_key,
              getattr(settings, "encryption_key", None)]
    found = [v.get_secret_value() for v in values if v is not None]
    return found + url_secrets(settings.openai_base_url)


def _install_factory() -> None:
    # Once per process; the factory reads _KNOWN at each record, so later installs add to it.
    current = logging.getLogRecordFactory()
    if getattr(current, "tunebot_masks", False):
        return
    base: Callable[..., logging.LogRecord] = current

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        mask_record(record, _KNOWN)
        return record

    factory.tunebot_masks = True  # type: ignore[attr-defined]  # a marker on the function
    logging.setLogRecordFactory(factory)


def install_log_filter(settings: Settings, logger: logging.Logger | None = None) -> TokenFilter:
    """Mask secrets in every log record of this process: the record factory, plus the filter
    on `logger` (default: root), on the Slack/Celery/HTTP loggers and on their handlers."""
    global _KNOWN
    filt = TokenFilter(secrets_of(settings))
    with _LOCK:
        _KNOWN = tuple(sorted({*_KNOWN, *filt.secrets}, key=len, reverse=True))
        _install_factory()
    target = logger or logging.getLogger()
    for each in (target, *(logging.getLogger(n) for n in NOISY)):
        for handler in each.handlers:
            handler.addFilter(filt)
        each.addFilter(filt)
    return filt
