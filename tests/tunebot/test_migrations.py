"""Migrations apply on SQLite and PostgreSQL and match the SQLModel tables exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from tunebot import migrate
from tunebot.db import make_engine
from tunebot.models import FormState, Job, Watch


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


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database (not migrated) on SQLite and on PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def test_0005_keeps_existing_jobs_and_adds_delivery_state_and_form_states(
        empty_url: str) -> None:
    migrate.upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (id, team_id, kind, queue, status, requested_by, channel, title, "
            "attempt, max_attempts, cancel_requested, progress, sends, created_at) VALUES "
            "(7, 'T1', 'ping', 'inference', 'succeeded', 'U1', 'C1', 'old job', 1, 5, false, "
            "1.0, 1, '2026-11-01 10:00:00')"))
        conn.execute(text(
            "INSERT INTO job_events (job_id, team_id, seq, kind, created_at, "
            "delivery_attempts) VALUES (7, 'T1', 1, 'final', '2026-11-01 10:00:01', 0)"))
    engine.dispose()

    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT title, delivery_attempts, delivery_error, "
                                "delivery_failed_at FROM jobs WHERE id = 7")).one()
        assert tuple(row) == ("old job", 0, None, None)
        assert conn.execute(text("SELECT count(*) FROM job_events")).scalar_one() == 1
        conn.execute(text("INSERT INTO form_states (key, team_id, user_id, data, created_at, "
                          "expires_at) VALUES ('k1', 'T1', 'U1', '{}', '2026-11-01 10:00:00', "
                          "'2026-11-02 10:00:00')"))
    with Session(engine) as session:  # the new columns and table through the models
        job = session.get(Job, 7)
        assert job is not None and job.delivery_attempts == 0 and job.delivery_failed_at is None
        state = session.exec(select(FormState)).one()
        assert state.key == "k1" and state.expires_at.tzinfo is not None
    engine.dispose()

    migrate.downgrade(empty_url, "0004")  # and back: the job survives without the columns
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT title FROM jobs WHERE id = 7")).scalar_one() == "old job"
        assert "form_states" not in inspect(conn).get_table_names()
        assert "delivery_error" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
    engine.dispose()


def test_0006_adds_guidelines_and_identities_and_keeps_existing_rows(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO prompts (team_id, name, description, owner, tags, "
                          "datasets, created_at, updated_at) VALUES ('T', 'p', '', 'U', '[]', "
                          "'{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    engine.dispose()
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    tables = set(inspect(engine).get_table_names())
    assert {"team_guidelines", "slack_identities"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM prompts")).scalars().all() == ["p"]
    engine.dispose()
    migrate.downgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    assert "team_guidelines" not in set(inspect(engine).get_table_names())
    engine.dispose()


def test_0007_keeps_label_history_and_adds_its_evidence(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0006")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO label_history (team_id, kind, name, label, from_version, "
                          "to_version, moved_by, moved_at) VALUES ('T', 'prompt', 'p', "
                          "'production', 1, 2, 'U', CURRENT_TIMESTAMP)"))
    engine.dispose()
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT to_version, reason, forced, evidence FROM "
                                "label_history")).one()
    assert (row[0], row[1], bool(row[2]), row[3]) == (2, "", False, None)
    engine.dispose()


def test_0008_adds_watches_and_keeps_existing_rows(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0007")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (id, team_id, kind, queue, status, requested_by, channel, title, "
            "attempt, max_attempts, cancel_requested, progress, sends, created_at, "
            "delivery_attempts) VALUES (9, 'T1', 'prompt_test', 'inference', 'succeeded', "
            "'U1', 'C1', 'old test', 1, 5, false, 1.0, 1, '2026-11-01 10:00:00', 0)"))
        conn.execute(text("INSERT INTO label_history (team_id, kind, name, label, to_version, "
                          "moved_by, moved_at, reason, forced) VALUES ('T1', 'prompt', 'p', "
                          "'production', 1, 'U1', CURRENT_TIMESTAMP, 'first', false)"))
    engine.dispose()

    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT title FROM jobs WHERE id = 9")).scalar_one() == \
            "old test"
        assert conn.execute(text("SELECT reason FROM label_history")).scalar_one() == "first"
        assert conn.execute(text("SELECT count(*) FROM watches")).scalar_one() == 0
    with Session(engine) as session:  # the new table through the model, JSON and all
        watch = Watch(team_id="T1", owner="U1", prompt_ref="p:production", prompt_name="p",
                      dataset="d", interval_seconds=3600,
                      next_run_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
                      accepted_passes=[True, False, None], accepted_job_id=9)
        session.add(watch)
        session.commit()
        row = session.exec(select(Watch)).one()
        assert (row.state, row.run_seq, row.note) == ("active", 0, "")
        assert row.accepted_passes == [True, False, None]
        assert row.next_run_at == datetime(2026, 12, 1, 9, tzinfo=UTC)
    engine.dispose()

    migrate.downgrade(empty_url, "0007")  # and back: the other tables keep their rows
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        assert "watches" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT title FROM jobs WHERE id = 9")).scalar_one() == \
            "old test"
    engine.dispose()


def test_0009_adds_job_parents_and_keeps_existing_jobs(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0008")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        for job_id, status in ((11, "succeeded"), (12, "queued")):
            conn.execute(text(
                "INSERT INTO jobs (id, team_id, kind, queue, status, requested_by, title, "
                "attempt, max_attempts, cancel_requested, progress, sends, created_at, "
                f"delivery_attempts, active_key) VALUES ({job_id}, 'T1', 'compare', "
                f"'inference', '{status}', 'U1', 'old {job_id}', 1, 5, false, 0.0, 1, "
                f"'2026-11-01 10:00:00', 0, 'btn:{job_id}')"))
    engine.dispose()

    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with Session(engine) as session:
        old = session.get(Job, 12)
        assert old is not None and old.parent_id is None and old.status == "queued"
        session.add(Job(id=13, team_id="T1", kind="finetune", queue="gpu", requested_by="U1",
                        params={}, parent_id=12))
        session.commit()
    with engine.begin() as conn:  # a waiting job keeps its active_key: the index covers it
        conn.execute(text("UPDATE jobs SET status = 'waiting' WHERE id = 12"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (team_id, kind, queue, status, requested_by, title, attempt, "
            "max_attempts, cancel_requested, progress, sends, created_at, delivery_attempts, "
            "active_key) VALUES ('T1', 'compare', 'inference', 'queued', 'U1', 'twin', 0, 5, "
            "false, 0.0, 0, '2026-11-01 10:00:00', 0, 'btn:12')"))
    engine.dispose()

    migrate.downgrade(empty_url, "0008")  # and back: a waiting job cannot stay waiting
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM jobs ORDER BY id")).all())
        assert rows == {11: "succeeded", 12: "failed", 13: "queued"}
        assert "parent_id" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
    engine.dispose()


def test_0010_keeps_pending_uploads_and_adds_their_mapping(empty_url: str) -> None:
    migrate.upgrade(empty_url, "0009")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO pending_uploads (team_id, user_id, channel, name, created_at, "
            "expires_at) VALUES ('T1', 'U1', 'C1', 'tickets', '2026-11-30 10:00:00', "
            "'2026-11-30 10:10:00')"))
    engine.dispose()
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name, expected_column FROM pending_uploads")).one() \
            == ("tickets", None)
        conn.execute(text("INSERT INTO pending_uploads (team_id, user_id, channel, name, "
                          "expected_column, created_at, expires_at) VALUES ('T1', 'U2', 'C1', "
                          "'faq', 'answer text', '2026-11-30 10:00:00', '2026-11-30 10:10:00')"))
    engine.dispose()
    migrate.downgrade(empty_url, "0009")  # and back: the requests stay, without a mapping
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM pending_uploads ORDER BY name")).scalars()
        assert list(names) == ["faq", "tickets"]
        cols = {c["name"] for c in inspect(conn).get_columns("pending_uploads")}
    assert "expected_column" not in cols
    engine.dispose()
