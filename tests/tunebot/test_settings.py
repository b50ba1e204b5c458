"""Settings: defaults under var/, Slack's own variable names, lists, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebot.settings import SettingsError, load_settings


def test_embedded_defaults_live_under_var() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///var/tunebot.db"
    assert s.broker_url == "sqla+sqlite:///var/broker.db"
    assert s.artifacts == Path("var/artifacts")
    assert (s.lease_seconds, s.heartbeat_seconds, s.reconcile_seconds) == (60, 15, 30)
    assert s.max_attempts == 5 and s.max_jobs_per_user == 3


def test_slack_names_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "sign")
    monkeypatch.setenv("TUNEBOT_ADMINS", "U1, U2")
    monkeypatch.setenv("TUNEBOT_DATABASE_URL", "postgresql+psycopg://x@h/db")
    s = load_settings()
    assert s.slack_bot_token is not None
    assert s.slack_bot_token.get_secret_value() == "xoxb-secret"
    assert "xoxb-secret" not in repr(s) and "xoxb-secret" not in str(s.model_dump())
    assert s.admins == ["U1", "U2"] and s.is_admin("U2") and not s.is_admin("U3")
    assert s.database_url.startswith("postgresql")


def test_bad_setting_fails_with_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOT_LEASE_SECONDS", "soon")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    msg = str(exc.value)
    assert "\n" not in msg and "TUNEBOT_LEASE_SECONDS" in msg


def test_heartbeat_must_be_shorter_than_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEBOT_LEASE_SECONDS", "10")
    monkeypatch.setenv("TUNEBOT_HEARTBEAT_SECONDS", "20")
    with pytest.raises(SettingsError, match="heartbeat_seconds"):
        load_settings()
