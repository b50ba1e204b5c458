"""/prompt optimize through a real worker on the tiny model: the saved version, its author and
label, progress, the leaderboard and the paired result; cancel; bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings, wait_final
from tunebot import catalog, datasets, jobs, migrate
from tunebot.buttons import COMPARE_PRODUCTION, PROMOTE, buttons_for, run_action
from tunebot.commands import parse
from tunebot.core import Actor, build_core
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.replies import Reply, render_text

# The tiny model's weights are random, so no prompt makes it answer right. What a candidate can
# win on is the output parameters: the start lets it ramble for 12 tokens and its scorer wants
# at most 8, while every candidate's max_new_tokens is sized to the longest valid answer.
START: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Is this colour warm or cool? {{ colour }}"}],
    "variables": {"colour": "a colour name"},
    "params": {"temperature": 0.0, "max_new_tokens": 12},
    "output": {"format": "choice", "choices": ["warm", "cool"]},
    "scorers": [{"type": "max-tokens", "max": 8}],
    "docs": {"task": "Say whether a colour is warm or cool.",
             "limitations": "Measured on nothing yet."},
}
WARM = ["red", "orange", "yellow", "pink", "crimson", "amber", "gold", "coral", "peach",
        "scarlet", "rust", "salmon"]
COOL = ["blue", "green", "purple", "teal", "cyan", "navy", "mint", "indigo", "azure",
        "lavender", "olive", "turquoise"]


def _rows(words: list[str], label: str) -> list[dict[str, str]]:
    return [{"colour": w, "expected": label} for w in words]


@pytest.fixture
def catalog_only(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The shades prompt (on the tiny model, so the production gate compares there too) and
    its sets, no worker."""
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = build_core(settings)
    actor = Actor(team_id="T0TEAM", user_id="U0ALICE")
    with session_scope(app.engine) as s:
        catalog.save_version(session=s, team_id="T0TEAM", name="shades",
                             content={**START, "model": str(tiny_model_dir)},
                             author="U0ALICE", message="v1")
    for name, rows in (("shades-eval", _rows(WARM[:6], "warm") + _rows(COOL[:6], "cool")),
                       ("shades-train", _rows(WARM[6:], "warm") + _rows(COOL[6:], "cool")
                        + _rows(WARM[:2], "warm"))):  # two eval inputs: dropped from dev
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        datasets.add_dataset(engine=app.engine, settings=settings, team_id="T0TEAM", name=name,
                             path=path, user="U0ALICE")
    return settings, app, actor


@pytest.fixture
def world(catalog_only, start_worker, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    settings, app, actor = catalog_only
    worker = start_worker(settings, "inference")
    return settings, app, actor, worker, tiny_model_dir


def run(app, actor, text: str):  # type: ignore[no-untyped-def]
    return execute(parse(text), actor, app)


def texts(app, job_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [render_text(Reply.from_dict(e.payload))
            for e in jobs.read_events(engine=app.engine, job_id=job_id)]


def test_optimize_saves_a_candidate_version_with_the_paired_result(world) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor, worker, model = world
    out = run(app, actor, f"/prompt optimize shades@1 on shades-eval train=shades-train "
                          f"model={model} budget=6")
    assert out.job is not None, out.reply.text
    p = out.job.params
    assert (p["prompt"]["version_id"], p["train"], p["train_version"], p["budget"]) == (
        p["prompt"]["version_id"], "shades-train", 1, 6)
    job = wait_final(app.engine, out.job.id, timeout=180)
    assert job.status == "succeeded", job.error
    r = job.result
    assert r["saved"]["ref"] == "shades@2" and r["saved"]["version"] == 2
    assert r["start_accuracy"] == 0.0 and r["winner_accuracy"] == 1.0
    assert r["paired"]["fixed"] == 12 and r["paired"]["broken"] == 0
    assert r["paired"]["p_value"] < 0.01
    assert r["split"]["heldout"] == 12 and r["split"]["source"] == "train"
    assert r["code_version"] and r["leaderboard"][0]["candidate"] != "start"
    assert any(e["candidate"] == "start" for e in r["leaderboard"])
    with session_scope(app.engine) as s:
        v = catalog.resolve(session=s, team_id="T0TEAM", ref="shades@2")
        labels = catalog.labels_of(session=s, team_id="T0TEAM", name="shades")
        assert v.author == "tunebot optimize"
        assert "job #" in v.message and "held-out 100.0%" in v.message
        assert v.content["docs"]["task"] == START["docs"]["task"]  # the start's docs kept
        assert "Optimised by /prompt optimize" in v.content["docs"]["context"]
        assert "100.0%" in v.content["docs"]["limitations"]
        assert v.content["params"]["max_new_tokens"] <= 8
    assert labels == {"candidate": 2}
    said = "\n".join(texts(app, job.id))
    assert "Racing" in said and "best on dev" in said and "candidates tried" in said
    assert "Leaderboard on the dev split" in said and "Verdict:" in said
    assert "2 training rows dropped" in said  # the eval inputs never reach the dev split
    assert "Saved shades@2" in said and "labelled `candidate`" in said
    # the buttons act on the saved version: Promote is `/prompt label shades@2 production`
    assert {b["action_id"] for b in buttons_for(job.kind, job.status, p, job.id)} >= {
        PROMOTE, COMPARE_PRODUCTION}
    promoted = run_action(PROMOTE, str(job.id), actor, app)  # through the production gate
    assert "production moves on evidence" in promoted.reply.text, promoted.reply.text
    with session_scope(app.engine) as s:
        assert catalog.labels_of(session=s, team_id="T0TEAM", name="shades") == {"candidate": 2}
    # With the start in production, this job's paired measure on every eval case (the train
    # split held none of them out) is the gate's evidence: Promote moves at once, citing it.
    with session_scope(app.engine) as s:
        catalog.set_metadata(session=s, prompt=catalog.get_prompt(
            session=s, team_id="T0TEAM", name="shades"), datasets={"eval": "shades-eval"})
        catalog.set_label(session=s, team_id="T0TEAM", ref="shades@1", label="production",
                          user="U0ADMIN", reason="the start ships", forced=True)
    promoted = run_action(PROMOTE, str(job.id), actor, app)
    assert out_job_id(promoted) is None, promoted.reply.text  # nothing queued
    assert "shades:production → v2 (was v1)" in promoted.reply.text, promoted.reply.text
    assert f"job #{job.id}" in promoted.reply.text
    with session_scope(app.engine) as s:
        assert catalog.labels_of(session=s, team_id="T0TEAM", name="shades")["production"] == 2


def out_job_id(outcome: Any) -> int | None:
    return outcome.job.id if getattr(outcome, "job", None) is not None else None


def test_optimize_splits_the_eval_set_and_can_be_cancelled(world) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor, worker, model = world
    out = run(app, actor, f"/prompt optimize shades@1 on shades-eval model={model} budget=200")
    assert out.job is not None and out.job.params["split"] == "eval", out.reply.text
    deadline = time.monotonic() + 60
    while not any("Racing" in t for t in texts(app, out.job.id)):
        assert time.monotonic() < deadline, texts(app, out.job.id)
        time.sleep(0.1)
    said = "\n".join(texts(app, out.job.id))
    assert "no training set: the eval set is split" in said and "6 rows held out" in said
    jobs.request_cancel(engine=app.engine, job_id=out.job.id)
    job = wait_final(app.engine, out.job.id, timeout=30)
    assert job.status == "cancelled"
    with session_scope(app.engine) as s:
        assert catalog.labels_of(session=s, team_id="T0TEAM", name="shades") == {}


def test_bad_optimize_input_gets_a_clear_reply(catalog_only) -> None:  # type: ignore[no-untyped-def]
    settings, app, actor = catalog_only

    def said(text: str) -> str:
        try:
            return run(app, actor, text).reply.text
        except UserError as exc:  # the grammar's own checks (ranges, names) come from parse
            return str(exc)

    assert "budget must be between 4 and 200 (got 1)" in said(
        "/prompt optimize shades on shades-eval budget=1")
    assert "no dataset `nope`" in said("/prompt optimize shades on shades-eval train=nope")
    assert "proposer must be openai:NAME" in said(
        "/prompt optimize shades on shades-eval proposer=smollm2")
    assert "no prompt `nope`" in said("/prompt optimize nope on shades-eval")
