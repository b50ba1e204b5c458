"""The bundled SmolLM2 on a starter prompt, through a real worker (marked: slow, runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.workers.test_prompt_test_e2e import texts, wait_final
from tunebot import migrate
from tunebot.catalog.files import import_dir
from tunebot.commands import parse
from tunebot.core import Actor, Core, build_core
from tunebot.dispatch import execute
from tunebot.settings import Settings

CATALOG = Path(__file__).resolve().parents[2] / "prompts"


def starter_catalog(tmp_path: Path) -> tuple[Settings, Core, Actor]:
    """A migrated workspace holding the starter catalog (prompts/ and its datasets)."""
    # The converted model is cached per machine (var/models of the repo) to spare 30 s a run.
    settings = make_settings(tmp_path, model_cache_dir=CATALOG.parent / "var" / "models")
    migrate.upgrade(settings.database_url)
    app = build_core(settings)
    report = import_dir(engine=app.engine, settings=settings, team_id="T0TEAM", user="U0ALICE",
                        path=CATALOG)
    assert report.ok, report.lines()
    return settings, app, Actor(team_id="T0TEAM", user_id="U0ALICE")


@pytest.mark.smollm2
def test_sentiment_production_beats_chance_on_smollm2(tmp_path: Path, start_worker) -> None:
    settings, app, actor = starter_catalog(tmp_path)
    start_worker(settings, "inference")
    out = execute(parse("/prompt compare sentiment@1 sentiment:production on sentiment-eval"),
                  actor, app)
    job = wait_final(app.engine, out.job.id, timeout=600)
    assert job.status == "succeeded", job.error
    v1, prod = job.result["summaries"]
    assert prod["ci"][0] > 0.5  # clearly above chance (two classes)
    assert prod["accuracy"] > v1["accuracy"]
    assert job.result["paired"]["p_value"] < 0.05
    thread = "\n".join(texts(app, job.id))
    assert "running accuracy" in thread and "Verdict: sentiment@2 beats sentiment@1" in thread
