"""Per-case results of prompt tests and comparisons in SQL: one row per case and sample."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, update
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


def update_case_results(*, engine: Engine, job_id: int, candidate: str,
                        rows: list[dict[str, Any]]) -> None:
    """Replace stored cases' latency_ms, scores and passed, keyed by case_index and
    sample_index, in one transaction (a run's single-request times, measured after its batch,
    and the latency scores that depend on them)."""
    if not rows:
        return
    t = cast(Table, getattr(CaseResult, "__table__"))  # noqa: B009  # untyped on SQLModel
    stmt = update(t).where(
        t.c.job_id == bindparam("b_job"), t.c.candidate == bindparam("b_cand"),
        t.c.case_index == bindparam("b_case"), t.c.sample_index == bindparam("b_sample"),
    ).values(latency_ms=bindparam("b_ms"), scores=bindparam("b_scores", type_=t.c.scores.type),
             passed=bindparam("b_passed"))
    params = [{"b_job": job_id, "b_cand": candidate, "b_case": r["case_index"],
               "b_sample": r["sample_index"], "b_ms": r["latency_ms"], "b_scores": r["scores"],
               "b_passed": r["passed"]} for r in rows]
    with session_scope(engine) as session:
        session.connection().execute(stmt, params)
