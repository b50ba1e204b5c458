"""Which Slack workspace the CLI acts on.

TUNEBOT_CLI_TEAM when it is set. Otherwise, with a single workspace's bot token
(SLACK_BOT_TOKEN), that token's own workspace — asked of Slack's auth.test once (5 s timeout)
and cached in the database by the token's hash — so `tunebot catalog import prompts/` fills
the catalog the bot answers from. With OAuth (many workspaces) there is no single answer:
TUNEBOT_CLI_TEAM is required. Without Slack, the local workspace `local`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import httpx
from sqlalchemy.engine import Engine

from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.models import SlackIdentity, utcnow
from tunebot.settings import Settings

LOCAL = "local"
AUTH_TEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Workspace:
    """The workspace the CLI acts on, and how it was chosen (said to the user when it matters)."""

    team_id: str
    source: str  # "TUNEBOT_CLI_TEAM" | "bot token" | "local" | "local (Slack unreachable)"
    note: str = ""


def cli_workspace(settings: Settings, engine: Engine) -> Workspace:
    """Resolve the CLI's workspace as the module docstring says."""
    if "cli_team" in settings.model_fields_set:
        return Workspace(settings.cli_team, "TUNEBOT_CLI_TEAM")
    if settings.slack_client_id:
        raise UserError("with OAuth (many workspaces), set TUNEBOT_CLI_TEAM to the workspace "
                        "id (T…) the CLI should act on")
    if settings.slack_bot_token is None:
        return Workspace(LOCAL, "local")
    token = settings.slack_bot_token.get_secret_value()
    digest = hashlib.sha256(token.encode()).hexdigest()
    with session_scope(engine) as session:
        cached = session.get(SlackIdentity, digest)
        if cached is not None:
            return Workspace(cached.team_id, "bot token",
                             f"the bot's workspace {cached.team_name or cached.team_id}")
    try:
        resp = httpx.post(settings.slack_api_url.rstrip("/") + "/auth.test",
                          headers={"Authorization": f"Bearer {token}"},
                          timeout=AUTH_TEST_TIMEOUT)
        body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Workspace(LOCAL, "local (Slack unreachable)",
                         f"Slack could not be reached ({exc.__class__.__name__}); acting on "
                         f"workspace {LOCAL} — set TUNEBOT_CLI_TEAM to choose one")
    if not body.get("ok") or not body.get("team_id"):
        return Workspace(LOCAL, "local (Slack unreachable)",
                         f"auth.test refused the bot token ({str(body.get('error'))[:40]}); "
                         f"acting on workspace {LOCAL} — set TUNEBOT_CLI_TEAM to choose one")
    team_id, team_name = str(body["team_id"])[:32], str(body.get("team") or "")[:255]
    with session_scope(engine) as session:
        row = session.get(SlackIdentity, digest) or SlackIdentity(token_sha256=digest,
                                                                   team_id=team_id)
        row.team_id, row.team_name, row.checked_at = team_id, team_name, utcnow()
        session.add(row)
    return Workspace(team_id, "bot token", f"the bot's workspace {team_name or team_id}")
