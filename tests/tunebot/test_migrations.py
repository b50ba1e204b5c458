"""Migrations apply on SQLite and PostgreSQL and match the SQLModel tables exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import tunebot.models  # noqa: F401
from tunebot import migrate
from tunebot.db import make_engine


def test_upgrade_matches_models_and_downgrades(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == [], diff
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "job_events", "prompts", "prompt_versions", "labels", "label_history",
            "datasets", "metrics", "case_results", "model_versions"} <= tables
    engine.dispose()
    migrate.downgrade(db_url, "base")
    engine = make_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate.upgrade(db_url)
