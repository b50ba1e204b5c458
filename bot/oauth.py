"""Multi-workspace install: Slack OAuth with slack_sdk's SQL stores on tunebot's database.

Off unless SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set; then every token lives in
slack_installations / slack_bots (migration 0004), Fernet-encrypted with TUNEBOT_ENCRYPTION_KEY,
and Bolt authorizes each request with the bot token of the workspace it came from.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from slack_bolt import App as BoltApp
from slack_bolt.adapter.starlette.handler import to_bolt_request, to_starlette_response
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_sdk.oauth.installation_store import Bot
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from sqlalchemy import MetaData, and_, delete, desc, func, select, update
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.oauth_tables import SECRET_LENGTH, installation_tables
from tunebot.crypto import EncryptedString, cipher
from tunebot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

MANIFEST = Path(__file__).resolve().parent / "manifest.yaml"
STATE_SECONDS = 600
# Live install states kept at most: GET /slack/install needs no authentication, so a flood of
# it must not grow the table without bound (the oldest unused states go first).
MAX_STATES = 10_000


class EncryptedInstallationStore(SQLAlchemyInstallationStore):
    """slack_sdk's SQLAlchemy installation store whose token columns hold Fernet ciphertext.

    The column type encrypts on every save and decrypts on every find, so slack_sdk's own
    queries (latest bot, token rotation, deletes) run unchanged and never see ciphertext.
    """

    def __init__(self, *, client_id: str, engine: Engine, settings: Settings) -> None:
        super().__init__(client_id=client_id, engine=engine, logger=log)
        self.metadata = MetaData()
        self.installations, self.bots = installation_tables(
            self.metadata, EncryptedString(cipher(settings), SECRET_LENGTH))

    def find_bot_for_team(self, team_id: str) -> Bot | None:
        """The newest bot installed in a workspace, whether or not it belongs to a Grid org."""
        c = self.bots.c
        query = (self.bots.select()
                 .where(and_(c.client_id == self.client_id, c.team_id == team_id,
                             c.bot_token.is_not(None)))
                 .order_by(desc(c.installed_at)).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return self.build_bot_entity(row) if row is not None else None

    def delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        """Forget the workspace's bot, including the copies of its tokens on installation rows
        (a revoked token must not stay at rest, even encrypted)."""
        super().delete_bot(enterprise_id=enterprise_id, team_id=team_id)
        c = self.installations.c
        with self.engine.begin() as conn:
            conn.execute(update(self.installations)
                         .where(and_(c.client_id == self.client_id,
                                     c.enterprise_id == enterprise_id, c.team_id == team_id))
                         .values(bot_token=None, bot_refresh_token=None))


class ExpiringOAuthStateStore(SQLAlchemyOAuthStateStore):
    """slack_sdk's SQL state store, bounded: slack_sdk deletes a state only when it is consumed,
    so every install page opened and abandoned (or requested by anyone, unauthenticated) left
    a row forever. Each new state now removes the expired ones and all but the newest
    MAX_STATES, in the same small transaction."""

    def issue(self, *args: Any, **kwargs: Any) -> str:
        """A new state (slack_sdk's), then the table pruned."""
        state: str = super().issue(*args, **kwargs)
        try:
            self.prune()
        except Exception as exc:  # the state is issued; pruning again next time is enough
            log.warning("could not prune expired OAuth states: %s", exc.__class__.__name__)
        return state

    def prune(self) -> int:
        """Delete expired states and those beyond the newest MAX_STATES; how many went."""
        c = self.oauth_states.c
        # Naive UTC, as slack_sdk writes expire_at (normalize_datetime_for_db).
        now = datetime.now(tz=UTC).replace(tzinfo=None)
        with self.engine.begin() as conn:
            gone = conn.execute(delete(self.oauth_states).where(c.expire_at <= now)).rowcount
            top = conn.execute(select(func.max(c.id))).scalar()
            if top is not None and top > MAX_STATES:
                gone += conn.execute(delete(self.oauth_states)
                                     .where(c.id <= top - MAX_STATES)).rowcount
        return int(gone or 0)


def oauth_enabled(settings: Settings) -> bool:
    """Whether multi-workspace install is configured (either OAuth credential set)."""
    return bool(settings.slack_client_id) or settings.slack_client_secret is not None


def _client_credentials(settings: Settings) -> tuple[str, str]:
    if not settings.slack_client_id:
        raise SettingsError("tunebot: bad setting SLACK_CLIENT_ID: required with "
                            "SLACK_CLIENT_SECRET for multi-workspace install")
    if settings.slack_client_secret is None:
        raise SettingsError("tunebot: bad setting SLACK_CLIENT_SECRET: required with "
                            "SLACK_CLIENT_ID for multi-workspace install")
    return settings.slack_client_id, settings.slack_client_secret.get_secret_value()


def installation_store(settings: Settings, engine: Engine) -> EncryptedInstallationStore:
    """The encrypted installation store on tunebot's database (raises SettingsError without
    OAuth credentials or TUNEBOT_ENCRYPTION_KEY)."""
    client_id, _ = _client_credentials(settings)
    return EncryptedInstallationStore(client_id=client_id, engine=engine, settings=settings)


@cache
def bot_scopes() -> tuple[str, ...]:
    """The bot scopes the install asks for: the ones in bot/manifest.yaml, so they never drift."""
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    return tuple(manifest["oauth_config"]["scopes"]["bot"])


def oauth_settings(settings: Settings, engine: Engine) -> OAuthSettings | None:
    """Bolt's OAuth settings on tunebot's database, or None when SLACK_CLIENT_ID/SECRET are
    unset (single workspace, SLACK_BOT_TOKEN)."""
    if not oauth_enabled(settings):
        return None
    client_id, client_secret = _client_credentials(settings)
    return OAuthSettings(
        client_id=client_id,
        client_secret=client_secret,
        scopes=list(bot_scopes()),
        user_scopes=[],
        # Straight to Slack's consent page: the state cookie is set on this redirect.
        install_page_rendering_enabled=False,
        installation_store=installation_store(settings, engine),
        # Authorize with slack_bots only: the bot token is all tunebot ever acts with.
        installation_store_bot_only=True,
        state_store=ExpiringOAuthStateStore(expiration_seconds=STATE_SECONDS, engine=engine,
                                            logger=log),
        state_expiration_seconds=STATE_SECONDS,
        logger=log,
    )


def register_revocation(app: BoltApp) -> None:
    """Delete a workspace's stored tokens on tokens_revoked and app_uninstalled (OAuth only)."""
    if app.installation_store is not None:
        app.enable_token_revocation_listeners()


def bot_token_for(settings: Settings, engine: Engine, team_id: str) -> str | None:
    """The bot token to act in a workspace with: SLACK_BOT_TOKEN without OAuth, else the
    decrypted token of that workspace's installation (None when it is not installed)."""
    if not oauth_enabled(settings):
        return settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    bot = installation_store(settings, engine).find_bot_for_team(team_id)
    return bot.bot_token if bot is not None else None


def oauth_routes(bolt: BoltApp) -> list[Route]:
    """GET /slack/install (state cookie, redirect to Slack's consent page) and
    GET /slack/oauth_redirect (code exchanged, installation stored); none without OAuth."""
    flow = bolt.oauth_flow
    if flow is None:
        return []

    async def install(request: Request) -> Response:
        bolt_req = to_bolt_request(request, await request.body())
        return to_starlette_response(await run_in_threadpool(flow.handle_installation, bolt_req))

    async def callback(request: Request) -> Response:
        bolt_req = to_bolt_request(request, await request.body())
        return to_starlette_response(await run_in_threadpool(flow.handle_callback, bolt_req))

    return [Route(flow.install_path, install, methods=["GET"]),
            Route(flow.redirect_uri_path, callback, methods=["GET"])]
