"""/finetune through a real worker on the tiny model: check, train, register, then use it."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session

from tests.workers.test_prompt_test_e2e import ROWS, run, texts, wait_final, world  # noqa: F401
from tunebot import datasets
from tunebot.models import Metric, ModelVersion

HP = "epochs=4 lr=5e-3 batch_size=8 max_seq_len=48 lora_r=8 eval_every=3 seed=1"


def add_train(app, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "colours-train.jsonl"
    shades = ("light", "dark", "bright", "pale", "deep")
    rows = [{"colour": f"{shade} {r['colour']}", "expected": r["expected"]}
            for shade in shades for r in ROWS[:8]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM",
                         name="colours-train", path=path, user="U0ALICE")


def test_finetune_registers_a_model_that_prompt_tests_can_use(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings, app, actor, worker, model = world
    add_train(app, settings, tmp_path)
    out = run(app, actor, f"/finetune start {model} on colours-train prompt=colours {HP}")
    assert out.job is not None, out.reply.text
    job = wait_final(app.engine, out.job.id, timeout=420)
    said = "\n".join(texts(app, job.id))
    assert job.status == "succeeded", f"{job.error}\n{said}"
    assert "Data check of colours-train" in said and "Registered ft:colours@1" in said
    with Session(app.engine) as s:
        mv = s.execute(select(ModelVersion)).scalars().one()
        steps = sorted({m.step for m in s.execute(select(Metric).where(
            Metric.job_id == job.id, Metric.name == "train_loss")).scalars()})
    assert mv.template == "minimal" and mv.prompt_ref == "colours@2"
    assert (Path(mv.adapter_path) / "adapter_model.safetensors").is_file()
    assert steps and steps == sorted(set(steps))
    test = wait_final(app.engine, run(app, actor, "/prompt test colours on colours-eval "
                                      "model=ft:colours").job.id, timeout=240)
    assert test.status == "succeeded", test.error
    # A tuned model is tested the way its adapter was trained, and the thread says so.
    assert test.result["template"] == "minimal"
    assert any("template=minimal (the bare user turn, as the adapter was trained), as the "
               "adapter was trained" in t for t in texts(app, test.id))
    full = wait_final(app.engine, run(app, actor, "/prompt test colours on colours-eval "
                                      "model=ft:colours template=full").job.id, timeout=240)
    assert full.status == "succeeded" and full.result["template"] == "full"
    assert any("template=full (the whole prompt), as asked" in t for t in texts(app, full.id))


def test_finetune_rejects_bad_hyperparameters_at_once(world) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings, app, actor, worker, model = world
    bad = run(app, actor, f"/finetune start {model} on colours-eval lr=3")
    assert bad.reply.error and "lr must be between" in bad.reply.text
    assert "(got 3)" in bad.reply.text
    bad = run(app, actor, f"/finetune start {model} on colours-eval lrate=3")
    assert bad.reply.error and "unknown hyperparameter lrate" in bad.reply.text
    bad = run(app, actor, f"/finetune start {model} on colours-eval template=full")
    assert bad.reply.error and "give prompt=REF" in bad.reply.text


def test_estimate_reports_data_split_and_plan(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings, app, actor, worker, model = world
    add_train(app, settings, tmp_path)
    out = run(app, actor, f"/finetune estimate {model} on colours-train prompt=colours")
    job = wait_final(app.engine, out.job.id, timeout=180)
    assert job.status == "succeeded", job.error
    said = "\n".join(texts(app, job.id))
    assert "Data check of colours-train: 40 rows" in said and "Estimate:" in said
    assert job.result["train"] + job.result["val"] == 40 and job.result["val"] >= 5
    # The eval set repeats each row three times: deduplicated to 8, too few to train on.
    bad = wait_final(app.engine, run(app, actor, f"/dataset check colours-eval model={model} "
                                     "prompt=colours").job.id, timeout=180)
    assert bad.status == "failed"
    assert "line 9: same messages as line 1" in bad.error and "invalid_n_examples" in bad.error
