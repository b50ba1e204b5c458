"""Per-case results of prompt tests and comparisons in SQL: one row per case and sample."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.models import CaseResult


def clear_case_results(*, engine: Engine, job_id: int, candidate: str) -> None:
    """Drop a candidate's stored cases (a resumed run starts that candidate over)."""
    with session_scope(engine) as session:
        session.execute(delete(CaseResult).where(col(CaseResult.job_id) == job_id,
                                                 col(CaseResult.candidate) == candidate))


def add_case_results(*, engine: Engine, job_id: int, candidate: str,
                     rows: list[dict[str, Any]]) -> None:
    """Store a batch of scored cases of one candidate in one transaction."""
    with session_scope(engine) as session:
        for row in rows:
            session.add(CaseResult(job_id=job_id, candidate=candidate, **row))
