"""/model label and the production gate at the handler: non-protected labels move on the
word of whoever may label; production moves on a paired comparison of the two adapters (the
queued job's params, evidence reused when asked again), on a first measured result (a test
under the prompt, or the adapter's own held-out split), or by an admin's forced move with a
reason that /model show lists. Jobs are finished here by hand; tests/workers/
test_model_gate.py runs them through a real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from devtools.seed import CONTENT, seed_colours
from tests.conftest import make_settings
from tunebot import catalog, jobs, registry
from tunebot.catalog import promote
from tunebot.commands import parse
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.models import Job
from tunebot.replies import render_text

TEAM = "T0TEAM"
ADMIN = Actor(team_id=TEAM, user_id="U0ADMIN", is_admin=True)
ALICE = Actor(team_id=TEAM, user_id="U0ALICE")


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Core:
    """gate@1 (eval set colours-eval); ft:tri@1 (full) and @2 (minimal) trained for gate@1,
    @3 without prompt=, @4 on another base; ft:solo@1 (held-out 80%), ft:bare@1 (nothing)."""
    core = Core(make_settings(tmp_path), engine, None)
    seed_colours(engine, core.settings, tmp_path, team=TEAM, versions=1)
    with session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="gate", author="U0ALICE",
                             content=CONTENT, datasets={"eval": "colours-eval"})
    for template, prompt, base in (("full", "gate@1", "smollm2"),
                                   ("minimal", "gate@1", "smollm2"),
                                   ("minimal", None, "smollm2"), ("full", "gate@1", "other")):
        registry.register(engine=engine, team_id=TEAM, name="tri", created_by="U0ALICE",
                          base_model=base, adapter_path=str(tmp_path / "a"),
                          template=template, prompt_ref=prompt)
    registry.register(engine=engine, team_id=TEAM, name="solo", created_by="U0ALICE",
                      base_model="smollm2", adapter_path=str(tmp_path / "s"),
                      metrics={"held_out": {"tuned": 0.8, "base": 0.5}})
    registry.register(engine=engine, team_id=TEAM, name="bare", created_by="U0ALICE",
                      base_model="smollm2", adapter_path=str(tmp_path / "b"))
    return core


def run(app: Core, text: str, actor: Actor = ADMIN) -> Outcome:
    return execute(parse(text), actor, app)


def say(app: Core, text: str, actor: Actor = ADMIN) -> str:
    out = run(app, text, actor)
    assert not out.reply.error, out.reply.text
    return render_text(out.reply)


def err(app: Core, text: str, actor: Actor = ADMIN) -> str:
    out = run(app, text, actor)
    assert out.reply.error and out.job is None, render_text(out.reply)
    return out.reply.text


def labels(app: Core, name: str = "tri") -> dict[str, int]:
    return registry.model_labels(engine=app.engine, team_id=TEAM, name=name)


def finish(app: Core, job: Job, result: dict[str, Any]) -> None:
    """What a worker does with the job's row: lease it, then succeed with this result."""
    assert job.id is not None
    assert jobs.take_lease(engine=app.engine, job_id=job.id, owner="w", lease_seconds=30)
    assert jobs.finish(engine=app.engine, job_id=job.id, owner="w", status="succeeded",
                       result=result)


def summary(name: str, acc: float) -> dict[str, Any]:
    return {"candidate": name, "accuracy": acc, "ci": [max(acc - .2, 0), min(acc + .2, 1)],
            "judged": 24, "cases": 24}


def test_non_protected_labels_move_as_before(app: Core) -> None:
    assert say(app, "/model label tri@2 staging") == "ft:tri:staging → @2"
    assert say(app, "/model label tri@3 staging") == "ft:tri:staging → @3 (was @2)"
    assert "already points at @3" in say(app, "/model label tri@3 staging")
    assert "force and reason= are for protected labels (production)" in err(
        app, '/model label tri@1 staging force reason="x"')
    assert "/model label is for admins" in err(app, "/model label tri@1 staging", ALICE)
    assert "give the version" in err(app, "/model label tri staging")
    assert "no version 9" in err(app, "/model label tri@9 production")
    assert labels(app) == {"staging": 3}


def test_production_moves_on_a_paired_comparison_of_the_adapters(app: Core) -> None:
    # First label of an adapter trained with prompt=: a test under gate@1 on its eval set,
    # rendered as the adapter was trained; the move waits for it.
    out = run(app, "/model label tri@1 production")
    assert out.job is not None and out.job.kind == "prompt_test", render_text(out.reply)
    assert "ft:tri:production is unset; testing ft:tri@1 on colours-eval first" in \
        out.reply.text
    p = out.job.params
    assert (p["model"], p["template"], p["dataset"]) == ("ft:tri@1", "full", "colours-eval")
    assert p["candidates"][0]["name"] == "gate" and p["promote"]["kind"] == "model"
    assert labels(app) == {}
    finish(app, out.job, {"summaries": [summary("gate@1", 0.9)]})
    # Asked again, the finished test is the evidence (the worker would have moved it).
    moved = say(app, "/model label tri@1 production")
    assert moved.startswith("ft:tri:production → v1 (was unset): ft:tri@1 scored 90.0%")
    assert labels(app) == {"production": 1}

    # A worse candidate: the comparison is queued (holder first, each adapter with its own
    # template, on their base model), then refused with the numbers when asked again.
    out = run(app, "/model label tri@2 production")
    assert out.job is not None and out.job.kind == "model_compare", render_text(out.reply)
    assert "ft:tri:production stays on v1 for now: comparing ft:tri@2 with it on " \
        "colours-eval under gate@1" in out.reply.text
    p = out.job.params
    assert [(c["adapter"], c["template"]) for c in p["candidates"]] == [
        ("ft:tri@1", "full"), ("ft:tri@2", "minimal")]
    assert p["model"] == "smollm2" and p["promote"]["expect"] == 1
    again = run(app, "/model label tri@2 production")  # while it is queued: no twin job
    assert again.job is None and f"job #{out.job.id} is already comparing ft:tri@2" in \
        again.reply.text
    finish(app, out.job, {"summaries": [summary("ft:tri@1", 0.9), summary("ft:tri@2", 0.1)],
                          "paired": {"p_value": 0.0001, "b": 19, "c": 0}})
    refused = say(app, "/model label tri@2 production")
    assert refused.startswith("ft:tri:production stays on v1 — significantly worse: "
                              "ft:tri@2 10.0%")
    assert "vs ft:tri@1 90.0%" in refused and "p<0.001" in refused
    assert "0 fixed, 19 broken" in refused and f"job #{out.job.id}" in refused
    assert labels(app) == {"production": 1}

    # The rule may differ per team: "better" refuses a tie.
    app.settings.promotion_rule = "better"
    out = run(app, "/model label tri@2 production")  # same evidence key: reused, judged anew
    assert out.job is None and "not significantly better" in out.reply.text


def test_admins_force_with_a_reason_and_model_show_says_why(app: Core) -> None:
    assert "force needs a reason" in err(app, "/model label tri@2 production force")
    assert "force needs a reason" in err(app, '/model label tri@2 production force reason=" "')
    moved = say(app, '/model label tri@2 production force reason="hotfix for the launch"')
    assert moved == ("ft:tri:production → v2 (was unset): forced by U0ADMIN: hotfix for "
                     "the launch")
    say(app, "/model label tri@1 staging")
    shown = say(app, "/model show tri")
    assert "production → @2" in shown and "staging → @1" in shown
    assert "⚠ forced: forced by U0ADMIN: hotfix for the launch" in shown
    with session_scope(app.engine) as s:  # model moves never show up as prompt moves
        assert not catalog.history(session=s, team_id=TEAM, name="gate").moves


def test_first_label_without_prompt_is_judged_on_the_held_out_split(app: Core) -> None:
    moved = say(app, "/model label solo@1 production")
    assert moved == ("ft:solo:production → v1 (was unset): ft:solo@1 (its own held-out "
                     "split) scored 80.0% (minimum 0.0%)")
    assert "needs a measured result, and ft:bare@1 was trained without prompt= and has no " \
        "held-out accuracy" in err(app, "/model label bare@1 production")
    app.settings.min_production_accuracy = 0.85
    registry.register(engine=app.engine, team_id=TEAM, name="solo", created_by="U0ALICE",
                      base_model="smollm2", adapter_path="s2",
                      metrics={"held_out": {"tuned": 0.9}})
    # solo@2 has a holder to beat now, and no prompt's eval set to beat it on.
    assert "ft:solo@2 was trained without prompt=, so no eval set measures it against " \
        "ft:solo@1 (production)" in err(app, "/model label solo@2 production")
    registry.register(engine=app.engine, team_id=TEAM, name="low", created_by="U0ALICE",
                      base_model="smollm2", adapter_path="l",
                      metrics={"held_out": {"tuned": 0.5}})
    refused = say(app, "/model label low@1 production")
    assert refused.startswith("ft:low:production stays unset — ft:low@1 (its own held-out "
                              "split) scored 50.0%, below the team's minimum 85.0%")
    assert labels(app, "low") == {}


def test_the_gate_refuses_what_it_cannot_measure_and_a_stale_move(app: Core) -> None:
    say(app, '/model label tri@1 production force reason="setup"')
    assert "trained without prompt=" in err(app, "/model label tri@3 production")
    assert "ft:tri@4 is on other and ft:tri@1 (production) on smollm2" in err(
        app, "/model label tri@4 production")
    with session_scope(app.engine) as s:  # the prompt loses its eval set
        catalog.get_prompt(session=s, team_id=TEAM, name="gate").datasets = {}
    assert "moves on evidence from the eval set of gate (the prompt ft:tri@2 was trained " \
        "for), and it links none" in err(app, "/model label tri@2 production")
    # A queued move lands only while the holder is the one it was compared with.
    say(app, '/model label tri@3 production force reason="meanwhile"')
    line = promote.after_job(
        engine=app.engine, settings=app.settings, team_id=TEAM, job_id=7,
        params={"promote": {"kind": "model", "name": "tri", "label": "production", "to": 2,
                            "expect": 1, "actor": "U0ADMIN"}},
        result={"summaries": [summary("ft:tri@1", 0.5), summary("ft:tri@2", 0.5)],
                "paired": {"p_value": 1.0, "b": 0, "c": 0}})
    assert line == ("production did not move: ft:tri:production moved to v3 since it was "
                    "compared (at v1); ask again: /model label tri@2 production")
    assert labels(app) == {"production": 3}
