"""/compare … fair through a real worker on the tiny model: the chain parks, a child fine-tune
runs and wakes it, the four candidates are compared; a second run reuses both stages, a
changed key starts a new stage, and cancelling the parent cancels it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import update

from tests.workers.test_prompt_test_e2e import run, texts, wait_final, world  # noqa: F401
from tunebot import catalog, datasets, jobs
from tunebot.commands import parse_ref
from tunebot.db import session_scope
from tunebot.handlers.optimize import DEFAULT_BUDGET
from tunebot.jobs import chain
from tunebot.models import Job, Prompt
from workers.runners.fair import code_version

TRAIN = [("crimson", "warm"), ("amber", "warm"), ("gold", "warm"), ("navy", "cool"),
         ("olive", "cool"), ("violet", "cool"), ("coral", "warm"), ("cyan", "cool")]


def link_train(app, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "colours-train.jsonl"
    rows = [{"colour": f"{shade} {c}", "expected": e}
            for shade in ("light", "dark", "pale", "deep", "bright") for c, e in TRAIN]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM",
                         name="colours-train", path=path, user="U0ALICE")
    with session_scope(app.engine) as s:
        s.execute(update(Prompt).where(Prompt.name == "colours").values(
            datasets={"eval": "colours-eval", "train": "colours-train"}))


def finished_optimize(app, model: str, budget: int) -> int:  # type: ignore[no-untyped-def]
    """A finished /prompt optimize of colours@1 whose winner is colours@2 (the stage to reuse)."""
    ev = datasets.get_dataset(engine=app.engine, team_id="T0TEAM", name="colours-eval")
    tr = datasets.get_dataset(engine=app.engine, team_id="T0TEAM", name="colours-train")
    with session_scope(app.engine) as s:
        v1 = catalog.resolve(session=s, team_id="T0TEAM", ref=parse_ref("colours@1", ""))
        v2 = catalog.resolve(session=s, team_id="T0TEAM", ref=parse_ref("colours@2", ""))
        job = Job(team_id="T0TEAM", kind="prompt_optimize", queue="inference",
                  requested_by="U0ALICE", status="succeeded", params={
                      "prompt": {"ref": "colours@1", "name": "colours", "version": 1,
                                 "version_id": v1.id, "model": model},
                      "dataset": ev.name, "dataset_version": ev.version, "train": tr.name,
                      "train_version": tr.version, "model": model, "budget": budget,
                      "proposer": None},
                  result={"saved": {"name": "colours", "version": 2, "version_id": v2.id,
                                    "ref": "colours@2"}, "start_accuracy": 0.1,
                          "winner_accuracy": 0.2, "code_version": code_version()})
        s.add(job)
        s.flush()
        assert job.id is not None
        return job.id


def test_fair_compare_chains_its_stages_and_reuses_them(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings, app, actor, worker, model = world
    link_train(app, settings, tmp_path)
    opt_id = finished_optimize(app, str(model), budget=DEFAULT_BUDGET)
    out = run(app, actor, f"/compare colours@1 on colours-eval fair model={model}")
    assert out.job is not None, out.reply.text
    parent = wait_final(app.engine, out.job.id, timeout=420)
    said = "\n".join(texts(app, parent.id))
    assert parent.status == "succeeded", f"{parent.error}\n{said}"
    kids = chain.children(engine=app.engine, parent_id=parent.id)
    assert [(k.kind, k.status) for k in kids] == [("finetune", "succeeded")]
    assert kids[0].params["hp"] == {} and kids[0].params["template"] == "minimal"
    r = parent.result
    assert r["reused"] == ["optimize"] and r["ran"] == ["fine-tune"]
    assert r["optimize_job"] == opt_id and r["finetune_job"] == kids[0].id
    assert [c["kind"] for c in r["candidates"]] == ["start", "optimised", "tuned", "hybrid"]
    assert r["recommendation"].startswith("Recommendation:")
    # One thread: the stages announced, the child's own messages copied in, the verdict.
    assert f"Stage optimize: reusing job #{opt_id}" in said
    assert f"↳ #{kids[0].id} finetune:" in said and "Registered ft:colours@1" in said
    assert "stages reused: optimize" in said and "Recommendation:" in said

    # The same request again: both stages reused, no child at all.
    again = wait_final(app.engine, run(app, actor, f"/compare colours@1 on colours-eval fair "
                                        f"model={model}").job.id, timeout=240)
    assert again.status == "succeeded", again.error
    assert again.result["reused"] == ["optimize", "fine-tune"]
    assert chain.children(engine=app.engine, parent_id=again.id) == []

    # A changed key (another budget) is not reused: an optimize stage starts; cancelling the
    # parent cancels it.
    third = run(app, actor, f"/compare colours@1 on colours-eval fair model={model} budget=5")
    assert third.job is not None and third.job.id is not None
    deadline = time.monotonic() + 60
    while not chain.children(engine=app.engine, parent_id=third.job.id):
        assert time.monotonic() < deadline, "no optimize stage was started"
        time.sleep(0.3)
    cancel = run(app, actor, f"/tunebot cancel {third.job.id}")
    assert "cancel" in cancel.reply.text.lower()
    ended = wait_final(app.engine, third.job.id, timeout=60)
    assert ended.status == "cancelled"
    for kid in chain.children(engine=app.engine, parent_id=third.job.id):
        assert kid.kind == "prompt_optimize" and kid.params["budget"] == 5
        done = wait_final(app.engine, kid.id, timeout=60)
        assert done.status == "cancelled", (done.status, done.error)
    assert jobs.get(engine=app.engine, job_id=third.job.id).status == "cancelled"
