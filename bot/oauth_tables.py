"""slack_sdk's OAuth tables (installations, bots, states) declared on tunebot's metadata.

The shapes are slack_sdk's own (its stores' `build_*_table` classmethods), so its SQLAlchemy
stores read and write them unchanged; the secret columns are widened to hold Fernet ciphertext.
Declared here so that Alembic compares them like every other table (migration 0004).
"""

from __future__ import annotations

from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from sqlalchemy import MetaData, Table
from sqlalchemy.types import String, TypeEngine
from sqlmodel import SQLModel

INSTALLATIONS = SQLAlchemyInstallationStore.default_installations_table_name
BOTS = SQLAlchemyInstallationStore.default_bots_table_name
OAUTH_STATES = SQLAlchemyOAuthStateStore.default_table_name

SECRET_LENGTH = 1024
# Bearer credentials: each lets its holder act as the app in a workspace (an incoming webhook
# URL posts to its channel), so each is stored encrypted.
SECRET_COLUMNS = frozenset({"bot_token", "bot_refresh_token", "user_token",
                            "user_refresh_token", "incoming_webhook_url"})


def _widen(table: Table, secret_type: TypeEngine[str]) -> Table:
    for column in table.c:
        if column.name in SECRET_COLUMNS:
            column.type = secret_type
    return table


def installation_tables(metadata: MetaData,
                        secret_type: TypeEngine[str] | None = None) -> tuple[Table, Table]:
    """The installations and bots tables on `metadata`, secret columns of `secret_type`."""
    secret = secret_type if secret_type is not None else String(SECRET_LENGTH)
    installations = SQLAlchemyInstallationStore.build_installations_table(metadata, INSTALLATIONS)
    bots = SQLAlchemyInstallationStore.build_bots_table(metadata, BOTS)
    return _widen(installations, secret), _widen(bots, secret)


slack_installations, slack_bots = installation_tables(SQLModel.metadata)
slack_oauth_states = SQLAlchemyOAuthStateStore.build_oauth_states_table(SQLModel.metadata,
                                                                        OAUTH_STATES)
