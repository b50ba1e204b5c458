"""Alembic environment: the URL comes from Settings (or the config's attributes in tests)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import bot.oauth_tables  # noqa: F401  (slack_sdk's OAuth store tables)
import tunebot.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from tunebot.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from tunebot.settings import load_settings

        url = load_settings().database_url
    return url


def run_migrations_offline() -> None:
    """Emit SQL without a database connection."""
    context.configure(url=_url(), target_metadata=target_metadata, compare_type=True,
                      render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply migrations on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      compare_type=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
