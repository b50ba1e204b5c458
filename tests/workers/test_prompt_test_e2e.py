"""Prompt tests and compares through a real worker on a tiny model; bad input fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from devtools.seed import ROWS, seed_colours
from tests.conftest import make_settings, wait_final
from tunebot import datasets, jobs, migrate
from tunebot.commands import parse
from tunebot.core import Actor, build_core
from tunebot.dispatch import execute
from tunebot.models import CaseResult
from tunebot.replies import Reply, render_text


@pytest.fixture
def world(tmp_path: Path, start_worker, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = build_core(settings)
    seed_colours(app.engine, settings, tmp_path)
    worker = start_worker(settings, "inference,gpu")
    actor = Actor(team_id="T0TEAM", user_id="U0ALICE")
    return settings, app, actor, worker, tiny_model_dir


def run(app, actor, text: str):  # type: ignore[no-untyped-def]
    return execute(parse(text), actor, app)


def texts(app, job_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The job's thread as the CLI prints it, one entry per message."""
    return [render_text(Reply.from_dict(e.payload)) for e in jobs.read_events(engine=app.engine,
                                                                              job_id=job_id)]


def test_prompt_test_scores_every_case_and_reports(world) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor, worker, model = world
    out = run(app, actor, f"/prompt test colours@1 on colours-eval model={model} samples=2")
    assert out.job is not None, out.reply.text
    job = wait_final(app.engine, out.job.id)
    assert job.status == "succeeded", job.error
    with Session(app.engine) as s:
        n = s.execute(select(func.count()).select_from(CaseResult)
                      .where(CaseResult.job_id == job.id)).scalar_one()
    assert n == len(ROWS) * 2
    summary = job.result["summaries"][0]
    assert summary["cases"] == len(ROWS) and 0 <= summary["ci"][0] <= summary["accuracy"]
    assert set(summary["classes"]["per_class"]) >= {"warm", "cool"}
    assert summary["consistency"]["k"] == 2
    said = "\n".join(texts(app, job.id))
    assert "accuracy" in said and "95% CI" in said and "running accuracy" in said


def test_prompt_compare_gives_a_paired_verdict(world) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor, worker, model = world
    out = run(app, actor, f"/prompt compare colours@1 colours@2 on colours-eval model={model}")
    job = wait_final(app.engine, out.job.id)
    assert job.status == "succeeded", job.error
    verdict = job.result["paired"]["verdict"]
    assert "colours@" in verdict or "no significant difference" in verdict
    assert any(t.startswith("Verdict:") for t in texts(app, job.id))


def test_bad_input_fails_clearly_and_the_worker_lives(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor, worker, model = world
    assert "no prompt `nope`" in run(app, actor, "/prompt test nope on colours-eval").reply.text
    assert "no dataset `nope`" in run(app, actor, "/prompt test colours on nope").reply.text
    bad = run(app, actor, "/prompt test colours on colours-eval model=../../etc")
    assert bad.reply.error and "not a model reference" in bad.reply.text
    # Rows without the prompt's variable: the job fails naming the line and the variable.
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"shade": "red", "expected": "warm"}) + "\n"
                             for _ in range(3)))
    datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM", name="other",
                         path=other, user="U0ALICE")
    job = wait_final(app.engine, run(app, actor, f"/prompt test colours on other model={model}")
                     .job.id)
    assert job.status == "failed" and "colour" in (job.error or "")
    # A model that does not exist offline: failed with a reason, worker still serving.
    missing = wait_final(app.engine, run(app, actor, "/prompt test colours on colours-eval "
                                         "model=nobody/no-such-model").job.id)
    assert missing.status == "failed" and "nobody/no-such-model" in (missing.error or "")
    ok = wait_final(app.engine, run(app, actor, f"/prompt test colours on colours-eval "
                                    f"model={model}").job.id)
    assert ok.status == "succeeded" and worker.proc.poll() is None
