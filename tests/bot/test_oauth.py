"""Multi-workspace install over OAuth against the local Slack API: the install round trip,
tokens encrypted at rest, requests authorized per workspace, refused states, revocation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from slack_bolt import App as BoltApp
from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from bot.app import http_app
from bot.notifier import make_client
from bot.oauth import (
    bot_scopes,
    bot_token_for,
    installation_store,
    oauth_routes,
    oauth_settings,
    register_revocation,
)
from bot.oauth_tables import slack_bots, slack_installations, slack_oauth_states
from devtools.slack_api.payloads import app_mention_event, event_body, signed_headers
from devtools.slack_api.server import SlackAPIServer
from tests.bot.conftest import Served
from tests.conftest import make_settings
from tunebot.crypto import DecryptionError
from tunebot.db import make_engine
from tunebot.settings import Settings, SettingsError

SECRET = "oauth-signing-secret"
KEY = Fernet.generate_key().decode()
TOKEN = "xoxb-T0OTHER-4242424242-plaintextbottoken"
COOKIE = "slack-app-oauth-state"


@dataclass
class OAuthStack:
    """The local Slack, an OAuth-configured Bolt app served over HTTP, and its database."""

    slack: SlackAPIServer
    settings: Settings
    engine: Engine
    url: str
    mentions: list[str] = field(default_factory=list)

    def get(self, path: str, **kw: object) -> httpx.Response:
        """GET a page of the bot as a browser would (no redirects followed)."""
        return httpx.get(self.url + path, follow_redirects=False, timeout=10, **kw)  # type: ignore[arg-type]

    def begin_install(self) -> tuple[str, str]:
        """GET /slack/install: the state in Slack's authorize URL and the cookie carrying it."""
        resp = self.get("/slack/install")
        assert resp.status_code == 302, resp.text
        state = parse_qs(urlsplit(resp.headers["location"]).query)["state"][0]
        cookie = resp.headers["set-cookie"].split(";")[0]
        return state, cookie

    def install(self, team_id: str, token: str, code: str) -> httpx.Response:
        """The whole round trip: install page, consent on Slack (a code), callback."""
        state, cookie = self.begin_install()
        self.slack.add_oauth_code(code, team_id=team_id, team=f"Team {team_id}", bot_token=token)
        return self.get("/slack/oauth_redirect", params={"code": code, "state": state},
                        headers={"Cookie": cookie})

    def event(self, event: dict, team_id: str) -> httpx.Response:
        """POST a signed Events API delivery from `team_id`."""
        body = event_body(event, team_id=team_id)
        return httpx.post(self.url + "/slack/events", content=body,
                          headers=signed_headers(body, SECRET), timeout=10)

    def rows(self, table, team_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
        """The raw SQL rows of an OAuth table for one workspace, ciphertext as stored."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(table).where(table.c.team_id == team_id)).mappings()]


@pytest.fixture
def oauth(db_url: str, tmp_path: Path) -> Iterator[OAuthStack]:
    """OAuth on: SLACK_CLIENT_ID/SECRET of the local Slack, an encryption key, no bot token."""
    with SlackAPIServer(signing_secret=SECRET) as slack:
        settings = make_settings(
            tmp_path, database_url=db_url, slack_api_url=slack.api_url,
            slack_signing_secret=SECRET, slack_client_id=slack.client_id,
            slack_client_secret=slack.client_secret, encryption_key=KEY)
        engine = make_engine(db_url)
        bolt = BoltApp(client=make_client(settings), signing_secret=SECRET,
                       oauth_settings=oauth_settings(settings, engine))
        register_revocation(bolt)
        stack_mentions: list[str] = []

        @bolt.event("app_mention")
        def mention(event: dict, say, context) -> None:  # type: ignore[no-untyped-def]
            stack_mentions.append(context.team_id)
            say(text="hello", thread_ts=event["ts"])

        server = Served(Starlette(routes=[*http_app(bolt).routes, *oauth_routes(bolt)]))
        try:
            yield OAuthStack(slack, settings, engine, server.base_url, stack_mentions)
        finally:
            server.stop()
            engine.dispose()


def test_install_stores_the_token_encrypted_and_authorizes_that_workspace(
        oauth: OAuthStack) -> None:
    resp = oauth.get("/slack/install")
    assert resp.status_code == 302
    authorize = urlsplit(resp.headers["location"])
    query = parse_qs(authorize.query)
    assert (authorize.netloc, authorize.path) == ("slack.com", "/oauth/v2/authorize")
    assert query["client_id"] == [oauth.slack.client_id]
    assert query["scope"][0].split(",") == list(bot_scopes())
    assert resp.headers["set-cookie"].startswith(f"{COOKIE}={query['state'][0]};")

    done = oauth.install("T0OTHER", TOKEN, "code-1")

    assert done.status_code == 200, done.text
    exchange = oauth.slack.calls_for("oauth.v2.access")
    assert [c.args["code"] for c in exchange] == ["code-1"]
    for table in (slack_bots, slack_installations):
        (row,) = oauth.rows(table, "T0OTHER")
        assert row["bot_user_id"] == "U0BOT" and row["team_name"] == "Team T0OTHER"
        assert row["bot_token"] and TOKEN not in row["bot_token"]
        assert "xoxb" not in row["bot_token"]
    assert bot_token_for(oauth.settings, oauth.engine, "T0OTHER") == TOKEN
    assert bot_token_for(oauth.settings, oauth.engine, "T0NOBODY") is None

    assert oauth.event(app_mention_event("hi", team="T0OTHER"), "T0OTHER").status_code == 200
    post = oauth.slack.wait_for(lambda: oauth.slack.calls_for("chat.postMessage"))
    assert [c.token for c in post] == [TOKEN]
    assert oauth.mentions == ["T0OTHER"]


def test_a_workspace_that_never_installed_is_not_served(oauth: OAuthStack) -> None:
    oauth.install("T0OTHER", TOKEN, "code-1")

    resp = oauth.event(app_mention_event("hi", team="T0NOBODY"), "T0NOBODY")

    assert resp.status_code == 200  # Slack must not retry; the request is simply not served
    time.sleep(0.5)
    assert oauth.mentions == []
    assert oauth.slack.calls_for("chat.postMessage") == []


@pytest.mark.parametrize("case", ["missing_cookie", "forged_state", "replayed_state",
                                  "missing_state"])
def test_a_bad_or_missing_state_is_refused(oauth: OAuthStack, case: str) -> None:
    state, cookie = oauth.begin_install()
    oauth.slack.add_oauth_code("code-1", team_id="T0OTHER", bot_token=TOKEN)
    params = {"code": "code-1", "state": state}
    headers = {"Cookie": cookie}
    if case == "missing_cookie":
        headers = {}
    elif case == "forged_state":
        params["state"] = "forged-state"
        headers = {"Cookie": f"{COOKIE}=forged-state"}
    elif case == "missing_state":
        del params["state"]
    elif case == "replayed_state":
        oauth.slack.add_oauth_code("code-0", team_id="T0OTHER", bot_token=TOKEN)
        first = oauth.get("/slack/oauth_redirect", params={"code": "code-0", "state": state},
                          headers=headers)
        assert first.status_code == 200
        with oauth.engine.begin() as conn:
            conn.execute(slack_bots.delete())
            conn.execute(slack_installations.delete())
        oauth.slack.calls.clear()

    resp = oauth.get("/slack/oauth_redirect", params=params, headers=headers)

    assert resp.status_code in (400, 401), resp.text
    assert oauth.slack.calls_for("oauth.v2.access") == []
    assert oauth.rows(slack_bots, "T0OTHER") == []
    assert bot_token_for(oauth.settings, oauth.engine, "T0OTHER") is None


def test_the_state_is_kept_in_sql(oauth: OAuthStack) -> None:
    state, _ = oauth.begin_install()
    with oauth.engine.connect() as conn:
        assert conn.execute(select(slack_oauth_states.c.state)).scalars().all() == [state]


def test_tokens_revoked_and_app_uninstalled_forget_the_workspace(oauth: OAuthStack) -> None:
    # A rotating token is long; its ciphertext must still fit the widened column (PostgreSQL).
    other, third = "xoxb-T0OTHER-1-secret", "xoxe.xoxb-1-" + "R" * 200
    assert oauth.install("T0OTHER", other, "code-1").status_code == 200
    assert oauth.install("T0THIRD", third, "code-2").status_code == 200

    revoked = {"type": "tokens_revoked", "tokens": {"oauth": [], "bot": ["U0BOT"]},
               "event_ts": f"{time.time():.6f}"}
    assert oauth.event(revoked, "T0OTHER").status_code == 200

    oauth.slack.wait_for(lambda: not oauth.rows(slack_bots, "T0OTHER"))
    oauth.slack.wait_for(lambda: all(r["bot_token"] is None
                                     for r in oauth.rows(slack_installations, "T0OTHER")))
    assert bot_token_for(oauth.settings, oauth.engine, "T0OTHER") is None
    oauth.event(app_mention_event("still there?", team="T0OTHER"), "T0OTHER")
    time.sleep(0.5)
    assert oauth.mentions == []

    uninstalled = {"type": "app_uninstalled", "event_ts": f"{time.time():.6f}"}
    assert oauth.event(uninstalled, "T0OTHER").status_code == 200
    oauth.slack.wait_for(lambda: not oauth.rows(slack_installations, "T0OTHER"))

    assert bot_token_for(oauth.settings, oauth.engine, "T0THIRD") == third
    assert oauth.event(uninstalled, "T0THIRD").status_code == 200
    oauth.slack.wait_for(lambda: not oauth.rows(slack_bots, "T0THIRD")
                         and not oauth.rows(slack_installations, "T0THIRD"))
    assert bot_token_for(oauth.settings, oauth.engine, "T0THIRD") is None


def test_without_client_credentials_oauth_is_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, slack_bot_token="xoxb-static")
    engine = make_engine(settings.database_url)

    assert oauth_settings(settings, engine) is None
    assert bot_token_for(settings, engine, "T0ANY") == "xoxb-static"
    bolt = BoltApp(client=make_client(settings), token_verification_enabled=False)
    assert oauth_routes(bolt) == []
    register_revocation(bolt)  # a no-op without an installation store
    engine.dispose()


@pytest.mark.parametrize(("over", "name"), [
    ({"slack_client_id": "1.2", "slack_client_secret": "s"}, "TUNEBOT_ENCRYPTION_KEY"),
    ({"slack_client_id": "1.2", "slack_client_secret": "s", "encryption_key": "short"},
     "TUNEBOT_ENCRYPTION_KEY"),
    ({"slack_client_id": "1.2", "encryption_key": KEY}, "SLACK_CLIENT_SECRET"),
    ({"slack_client_secret": "s", "encryption_key": KEY}, "SLACK_CLIENT_ID"),
])
def test_oauth_refuses_to_start_without_its_settings(tmp_path: Path, over: dict,
                                                     name: str) -> None:
    settings = make_settings(tmp_path, **over)
    engine = make_engine(settings.database_url)

    with pytest.raises(SettingsError) as excinfo:
        oauth_settings(settings, engine)

    message = str(excinfo.value)
    assert message.startswith(f"tunebot: bad setting {name}:") and "\n" not in message
    engine.dispose()


def test_a_changed_key_cannot_read_the_tokens(oauth: OAuthStack) -> None:
    oauth.install("T0OTHER", TOKEN, "code-1")
    other_key = oauth.settings.model_copy(
        update={"encryption_key": SecretStr(Fernet.generate_key().decode())})

    with pytest.raises(DecryptionError):
        installation_store(other_key, oauth.engine).find_bot_for_team("T0OTHER")
