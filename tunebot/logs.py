"""Logging that never shows a secret: Slack tokens, the signing and client secrets, API keys."""

from __future__ import annotations

import logging

from tunebot.settings import Settings


class TokenFilter(logging.Filter):
    """Masks each known secret (and anything shaped like a Slack token) in every record."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message (arguments merged in) with secrets replaced."""
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None
        return True


def secrets_of(settings: Settings) -> list[str]:
    """The secret values these settings hold."""
    values = [settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret,
              settings.slack_client_secret, settings.openai_api_key,
              getattr(settings, "encryption_key", None)]
    return [v.get_secret_value() for v in values if v is not None]


def install_log_filter(settings: Settings, logger: logging.Logger | None = None) -> TokenFilter:
    """Attach the filter to `logger` (default: root) and to every handler it has now."""
    target = logger or logging.getLogger()
    filt = TokenFilter(secrets_of(settings))
    for handler in target.handlers:
        handler.addFilter(filt)
    target.addFilter(filt)
    return filt
