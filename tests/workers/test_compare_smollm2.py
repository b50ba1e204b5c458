"""/compare on the bundled SmolLM2: the `sentiment` production prompt vs `ft:sentiment` on
`sentiment-eval`, after a short real LoRA fine-tune (marked: slow, still runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.test_prompt_test_e2e import texts, wait_final
from tests.workers.test_prompt_test_smollm2 import starter_catalog
from tunebot import registry
from tunebot.commands import parse
from tunebot.dispatch import execute


@pytest.mark.smollm2
def test_sentiment_prompt_vs_finetune_on_smollm2(tmp_path: Path, start_worker) -> None:
    settings, app, actor = starter_catalog(tmp_path)
    start_worker(settings, "inference,gpu")
    # One short epoch: enough for a real adapter; the verdict is whatever the numbers say.
    tune = execute(parse("/finetune start smollm2 on sentiment-train prompt=sentiment "
                         "epochs=1 lr=1e-3 batch_size=8 max_seq_len=64"), actor, app)
    assert tune.job is not None, tune.reply.text
    job = wait_final(app.engine, tune.job.id, timeout=900)
    assert job.status == "succeeded", f"{job.error}\n" + "\n".join(texts(app, job.id))
    (mv,) = registry.list_models(engine=app.engine, team_id="T0TEAM")
    assert mv.name == "sentiment" and mv.prompt_ref == "sentiment@2"

    out = execute(parse("/compare sentiment on sentiment-eval traffic=5000/day"), actor, app)
    assert out.job is not None, out.reply.text
    cmp = wait_final(app.engine, out.job.id, timeout=900)
    assert cmp.status == "succeeded", cmp.error
    r = cmp.result
    assert [c["kind"] for c in r["candidates"]] == ["prompt", "tuned"]
    assert all(c["cases"] == 80 for c in r["candidates"]) and r["excluded"] == 0
    assert r["recommendation"].startswith("Recommendation: ")
    assert r["decision"] in ("prompt", "fine-tune", "both")
    prompt_row = r["candidates"][0]
    assert prompt_row["ci"][0] > 0.5  # the production prompt is clearly above chance
    assert Path(r["chart"]).stat().st_size > 1000
    lines = [line for t in texts(app, cmp.id) for line in t.splitlines()]
    assert any(line.startswith("Recommendation: ") for line in lines)
