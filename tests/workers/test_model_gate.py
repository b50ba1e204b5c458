"""The production gate for model labels through a real worker, with tiny adapters whose
verdict is known by construction: a zero adapter (the tuned model is the base, which always
answers something) and a silencing one (the merged head is zero, so every answer is empty).
A first label after a measured test under the prompt, a worse adapter refused with the
numbers, and a tied one moved when its queued comparison finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.seed import CONTENT, seed_colours
from tests.conftest import make_settings, wait_final
from tests.workers.test_compare_e2e import zero_adapter
from tunebot import catalog, jobs, migrate, registry
from tunebot.commands import parse
from tunebot.core import Actor, Core, build_core
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.replies import Reply, render_text

ADMIN = Actor(team_id="T0TEAM", user_id="U0ADMIN", is_admin=True)
ANSWERS = {**CONTENT, "scorers": [{"type": "regex", "value": r"\S"}]}  # any non-empty answer


def silencing_adapter(base: Path, out: Path) -> Path:
    """A LoRA on lm_head with B·A = -W: merged, every logit is 0, so greedy decoding picks
    token 0 (a special token) every time and the decoded answer is empty."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    weight = model.lm_head.weight.detach().clone()
    hidden = weight.shape[1]
    peft_model = get_peft_model(model, LoraConfig(r=hidden, lora_alpha=hidden,
                                                  target_modules=["lm_head"]))
    layer = peft_model.base_model.model.lm_head
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.eye(hidden))
        layer.lora_B["default"].weight.copy_(-weight)
    peft_model.save_pretrained(out)
    return out


def say(core: Core, text: str) -> tuple[str, int | None]:
    out = execute(parse(text), ADMIN, core)
    assert not out.reply.error, out.reply.text
    return render_text(out.reply), out.job.id if out.job else None


def production(core: Core) -> int | None:
    return registry.model_labels(engine=core.engine, team_id="T0TEAM",
                                 name="colours").get("production")


def thread(core: Core, job_id: int) -> str:
    return "\n".join(render_text(Reply.from_dict(e.payload))
                     for e in jobs.read_events(engine=core.engine, job_id=job_id))


@pytest.fixture
def gate(tmp_path: Path, start_worker, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, max_jobs_per_user=50)
    migrate.upgrade(settings.database_url)
    core = build_core(settings)
    seed_colours(core.engine, settings, tmp_path, versions=1)
    with session_scope(core.engine) as s:
        catalog.save_version(session=s, team_id="T0TEAM", name="gate", author="U0ALICE",
                             content=ANSWERS, datasets={"eval": "colours-eval"})
    zero = zero_adapter(tiny_model_dir, tmp_path / "zero")
    mute = silencing_adapter(tiny_model_dir, tmp_path / "mute")
    for adapter, template in ((zero, "full"), (mute, "minimal"), (zero, "full")):
        registry.register(engine=core.engine, team_id="T0TEAM", name="colours",
                          created_by="U0ALICE", base_model=str(tiny_model_dir),
                          adapter_path=str(adapter), template=template, prompt_ref="gate@1")
    start_worker(settings, "inference")
    yield core
    core.engine.dispose()


def test_model_production_moves_only_on_evidence(gate: Core) -> None:
    # First label: a test of ft:colours@1 under gate@1 on its eval set, then the move.
    text, job = say(gate, "/model label colours@1 production")
    assert job is not None and "testing ft:colours@1 on colours-eval first" in text
    assert wait_final(gate.engine, job).status == "succeeded"
    told = thread(gate, job)
    assert "ft:colours:production → v1 (was unset): ft:colours@1 scored 100.0%" in told
    assert production(gate) == 1

    # The silenced adapter (its own template: minimal) is paired with the holder and refused.
    text, job = say(gate, "/model label colours@2 production")
    assert job is not None and "stays on v1 for now: comparing ft:colours@2" in text
    final = wait_final(gate.engine, job)
    told = thread(gate, job)
    assert final.status == "succeeded", f"{final.error}\n{told}"
    assert "Rendering ft:colours@2 with template=minimal" in told
    assert "ft:colours:production stays on v1 — significantly worse: ft:colours@2 0.0%" in told
    assert "vs ft:colours@1 100.0%" in told and "0 fixed, 24 broken" in told
    assert production(gate) == 1

    # An adapter that answers like the holder is not worse: its comparison moves the label.
    text, job = say(gate, "/model label colours@3 production")
    assert job is not None and production(gate) == 1
    assert wait_final(gate.engine, job).status == "succeeded"
    assert "ft:colours:production → v3 (was v1): not worse: ft:colours@3 100.0%" in \
        thread(gate, job)
    assert production(gate) == 3
    shown, _ = say(gate, "/model show colours")
    assert "production → @3" in shown and f"(job #{job})" in shown
