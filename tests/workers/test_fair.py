"""The fair compare's stages without a worker: which stage is reused (by key, and not on a
changed key) and how a failed stage fails the parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from devtools.seed import seed_colours
from tests.conftest import make_settings
from tests.tunebot.test_jobs import RecordingWaker
from tests.workers.test_fair_e2e import finished_optimize, link_train
from tunebot import datasets, jobs, migrate, registry
from tunebot.commands import parse
from tunebot.core import Actor, Core
from tunebot.db import make_engine, session_scope
from tunebot.dispatch import execute
from tunebot.errors import JobError, UserError
from tunebot.handlers.optimize import DEFAULT_BUDGET
from tunebot.jobs import chain
from tunebot.models import Job, Prompt
from workers.context import JobContext
from workers.runners import fair

MODEL = "smollm2"


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = Core(settings, make_engine(settings.database_url), RecordingWaker())
    seed_colours(app.engine, settings, tmp_path)
    link_train(app, settings, tmp_path)
    yield settings, app
    app.engine.dispose()


def _parent_ctx(settings: Any, app: Core, text: str) -> JobContext:
    out = execute(parse(text), Actor(team_id="T0TEAM", user_id="U0ALICE"), app)
    assert out.job is not None and out.job.id is not None, out.reply.text
    return _resume(settings, app, out.job.id)


def _resume(settings: Any, app: Core, job_id: int) -> JobContext:
    job = jobs.get(engine=app.engine, job_id=job_id)
    assert job is not None
    if job.status != "running":
        job = jobs.take_lease(engine=app.engine, job_id=job_id, owner="w", lease_seconds=60)
    assert job is not None
    return JobContext(job=job, settings=settings, engine=app.engine, waker=app.waker, owner="w")


def _adapter(app: Core, hp: dict[str, str], tmp_path: Path) -> None:
    """A registered adapter for colours@1 on colours-train, from a finetune job asking `hp`."""
    with session_scope(app.engine) as s:
        job = Job(team_id="T0TEAM", kind="finetune", queue="gpu", requested_by="U0ALICE",
                  status="succeeded", params={"hp": hp, "template": "minimal"})
        s.add(job)
        s.flush()
        job_id = job.id
    tr = datasets.get_dataset(engine=app.engine, team_id="T0TEAM", name="colours-train")
    registry.register(engine=app.engine, team_id="T0TEAM", name="colours",
                      created_by="U0ALICE", base_model=MODEL, adapter_path=str(tmp_path / "a"),
                      dataset_hash=tr.content_hash, prompt_ref="colours@1", template="minimal",
                      code_version=fair.code_version(), job_id=job_id,
                      metrics={"learned": True})


def test_stages_are_reused_by_key_and_not_on_a_changed_key(setup, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings, app = setup
    monkeypatch.setattr(fair, "code_version", lambda: "abc1234")
    opt = finished_optimize(app, MODEL, budget=DEFAULT_BUDGET)
    _set_code(app, opt, "abc1234")
    _adapter(app, {}, tmp_path)  # auto settings: the key matches
    _adapter(app, {"lr": "1e-3"}, tmp_path)  # explicit settings: never the auto stage
    compared: list[tuple[fair.Stage, Any]] = []
    monkeypatch.setattr(fair.FairRunner, "_compare",
                        lambda self, o, f: compared.append((o, f)) or {"done": True})

    ctx = _parent_ctx(settings, app, "/compare colours@1 on colours-eval fair")
    assert fair.FairRunner(ctx).run() == {"done": True}
    (o, (ft_stage, mv)), = compared
    assert o.reused and o.job is not None and o.job.id == opt
    assert ft_stage.reused and mv.version == 1  # v1 (auto), not v2 (lr=1e-3)
    assert chain.children(engine=app.engine, parent_id=ctx.job_id) == []
    said = [e.payload["text"] for e in jobs.read_events(engine=app.engine, job_id=ctx.job_id)]
    assert any(f"reusing job #{opt}" in t for t in said)
    assert any("reusing ft:colours@1" in t for t in said)

    # Another code version: neither stage matches, both start as children and it waits.
    monkeypatch.setattr(fair, "code_version", lambda: "def5678")
    ctx2 = _parent_ctx(settings, app,
                       f"/compare colours@1 on colours-eval fair budget={DEFAULT_BUDGET}")
    with pytest.raises(chain.Waiting, match="optimize and fine-tune"):
        fair.FairRunner(ctx2).run()
    kids = chain.children(engine=app.engine, parent_id=ctx2.job_id)
    assert sorted((k.kind, chain.stage_of(k)) for k in kids) == [
        ("finetune", "finetune"), ("prompt_optimize", "optimize")]
    ft = next(k for k in kids if k.kind == "finetune")
    assert ft.params["hp"] == {} and ft.params["dataset"] == "colours-train"
    assert ft.channel is None and ft.requested_by == "U0ALICE"


def _set_code(app: Core, job_id: int, code: str) -> None:
    job = jobs.get(engine=app.engine, job_id=job_id)
    assert job is not None
    with session_scope(app.engine) as s:
        s.execute(update(Job).where(col(Job.id) == job_id)
                  .values(result={**job.result, "code_version": code}))


def test_a_failed_stage_fails_the_parent_with_its_reason(setup) -> None:  # type: ignore[no-untyped-def]
    settings, app = setup
    opt = finished_optimize(app, MODEL, budget=DEFAULT_BUDGET)
    ctx = _parent_ctx(settings, app, "/compare colours@1 on colours-eval fair")
    with pytest.raises(chain.Waiting, match="waiting for fine-tune"):
        fair.FairRunner(ctx).run()
    assert chain.park(engine=app.engine, waker=app.waker, job_id=ctx.job_id,
                      owner="w") == "waiting"
    (child,) = chain.children(engine=app.engine, parent_id=ctx.job_id)
    assert jobs.take_lease(engine=app.engine, job_id=child.id, owner="c", lease_seconds=60)
    jobs.finish(engine=app.engine, job_id=child.id, owner="c", status="failed",
                error="the data check found 3 errors", waker=app.waker)
    resumed = _resume(settings, app, ctx.job_id)  # woken: queued, taken again
    with pytest.raises(JobError) as err:
        fair.FairRunner(resumed).run()
    assert str(err.value).startswith(
        f"the fine-tune stage (job #{child.id}) failed: the data check found 3 errors — "
        "nothing was compared")
    said = [e.payload["text"] for e in jobs.read_events(engine=app.engine, job_id=ctx.job_id)]
    assert sum(f"reusing job #{opt}" in t for t in said) == 1  # said once across both runs


def test_bad_fair_requests_are_refused_with_the_reason(setup) -> None:  # type: ignore[no-untyped-def]
    settings, app = setup
    actor = Actor(team_id="T0TEAM", user_id="U0ALICE")

    def reply(text: str) -> str:
        try:
            cmd = parse(text)
        except UserError as exc:  # refused by the grammar itself
            return str(exc)
        out = execute(cmd, actor, app)
        assert out.job is None and out.reply.error, out.reply.text
        return out.reply.text

    base = "/compare colours@1 on colours-eval fair"
    assert "budget must be between 4 and 200 (got 2)" in reply(f"{base} budget=2")
    assert "model must be a base model the fair fight can fine-tune" in reply(
        f"{base} model=openai:gpt-4o-mini")
    assert "traffic must look like 5000/day" in reply(f"{base} traffic=lots")
    assert "colours-train is colours's training set" in reply(
        "/compare colours@1 on colours-train fair")
    with session_scope(app.engine) as s:
        s.execute(update(Prompt).where(col(Prompt.name) == "colours").values(datasets={}))
    assert "prompt colours names no training set (datasets.train)" in reply(base)
    # Parsed as the fair action, not /compare NAME (a REF with a version is fine here).
    assert parse(base).action == "fair" and parse(base).args["ref"].version == 1
