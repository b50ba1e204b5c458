"""/compare through a real worker on tiny models, where the verdict is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workers.test_prompt_test_e2e import ROWS, run, texts, wait_final, world  # noqa: F401
from tunebot import registry


def zero_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter whose B matrices are zero: the tuned model IS the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    return out


def write_train(job_dir: Path, rows: list[dict]) -> None:
    (job_dir / "train.jsonl").write_text("".join(json.dumps(
        {"messages": [{"role": "user", "content": f"colour: {r['colour']}"},
                      {"role": "assistant", "content": r["expected"]}]}) + "\n" for r in rows))


@pytest.fixture
def tuned(world, tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    settings, app, actor, worker, model = world
    job_dir = tmp_path / "artifacts" / "ft-job"
    adapter = zero_adapter(model, job_dir / "adapter")
    # One eval colour was "in the training data" (3 rows): the comparison must exclude them.
    write_train(job_dir, ROWS[:1])
    mv = registry.register(engine=app.engine, team_id="T0TEAM", name="colours",
                           created_by="U0ALICE", base_model=str(model),
                           adapter_path=str(adapter), template="full",
                           prompt_ref="colours@2",
                           metrics={"train_seconds": 120.0, "device": "cpu",
                                    "train_examples": 40})
    return world, mv


def test_identical_tuned_model_means_keep_prompting(tuned) -> None:  # type: ignore[no-untyped-def]
    (settings, app, actor, worker, model), mv = tuned
    out = run(app, actor, "/compare colours on colours-eval hybrid traffic=1000/day")
    assert out.job is not None, out.reply.text
    job = wait_final(app.engine, out.job.id, timeout=240)
    assert job.status == "succeeded", job.error
    r = job.result
    assert r["decision"] == "prompt"
    assert r["recommendation"].startswith("Recommendation: keep prompting")
    assert r["excluded"] == 3  # "red" was trained on, and ROWS holds it three times
    assert len(r["candidates"]) == 3 and {c["kind"] for c in r["candidates"]} == {
        "prompt", "tuned", "hybrid"}
    # template=full: the tuned row runs the same prompt on an identical model → same answers.
    assert r["candidates"][0]["accuracy"] == r["candidates"][1]["accuracy"]
    assert Path(r["chart"]).is_file() and Path(r["chart"]).stat().st_size > 1000
    # In the terminal the recommendation starts a line, with no thread prefix.
    lines = [line for t in texts(app, job.id) for line in t.splitlines()]
    assert any(line.startswith("Recommendation: keep prompting") for line in lines)


def test_compare_refuses_too_few_cases_and_unknown_models(tuned) -> None:  # type: ignore[no-untyped-def]
    (settings, app, actor, worker, model), mv = tuned
    assert "no model `ft:nope`" in run(app, actor,
                                        "/compare colours vs ft:nope on colours-eval").reply.text
    assert "traffic must look like" in run(
        app, actor, "/compare colours on colours-eval traffic=lots").reply.text
    # Three colours in the training data leave 15 < 20 cases: refused with the reason.
    write_train(Path(mv.adapter_path).parent, ROWS[:3])
    job = wait_final(app.engine, run(app, actor, "/compare colours on colours-eval").job.id)
    assert job.status == "failed" and "only 15 held-out cases remain" in (job.error or "")
