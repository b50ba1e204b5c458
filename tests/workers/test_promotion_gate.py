"""The production gate through a real worker: a first label after a measured test, a worse
candidate refused with the numbers (evidence reused when asked again), a tie moved after its
comparison, an admin's forced move with its reason in the history, and compare-and-set."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.seed import CONTENT, seed_colours
from tests.conftest import make_settings, wait_final
from tunebot import catalog, jobs, migrate
from tunebot.catalog import promote
from tunebot.commands import parse
from tunebot.core import Actor, Core, build_core
from tunebot.db import session_scope
from tunebot.dispatch import execute
from tunebot.replies import Reply, render_text

ALICE = Actor(team_id="T0TEAM", user_id="U0ALICE", channel=None)
ADMIN = Actor(team_id="T0TEAM", user_id="U0ADMIN", is_admin=True)
ALWAYS = {**CONTENT, "scorers": [{"type": "regex", "value": "^"}]}  # every answer passes
NEVER = {**CONTENT, "scorers": [{"type": "regex", "value": "^IMPOSSIBLE$"}]}  # none does


def say(core: Core, text: str, actor: Actor = ALICE) -> tuple[bool, str, int | None]:
    out = execute(parse(text), actor, core)
    return out.reply.error, render_text(out.reply), out.job.id if out.job else None


def production(core: Core) -> int | None:
    with session_scope(core.engine) as s:
        return catalog.labels_of(session=s, team_id="T0TEAM", name="gate").get("production")


def thread(core: Core, job_id: int) -> str:
    return "\n".join(render_text(Reply.from_dict(e.payload))
                     for e in jobs.read_events(engine=core.engine, job_id=job_id))


@pytest.fixture
def gate(tmp_path: Path, start_worker, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, admins=["U0ADMIN"], max_jobs_per_user=50)
    migrate.upgrade(settings.database_url)
    core = build_core(settings)
    seed_colours(core.engine, settings, tmp_path, versions=1)
    model = str(tiny_model_dir)
    with session_scope(core.engine) as s:
        for content, message in ((ALWAYS, "v1 always"), (NEVER, "v2 never"),
                                 ({**ALWAYS, "tone": "plain"}, "v3 tie")):
            catalog.save_version(session=s, team_id="T0TEAM", name="gate", author="U0ALICE",
                                 content={**content, "model": model}, message=message,
                                 datasets={"eval": "colours-eval"})
    start_worker(settings, "inference")
    yield core
    core.engine.dispose()


def test_production_moves_only_on_evidence(gate: Core) -> None:
    # The first production label: a prompt test on the eval set, then the move.
    error, text, job = say(gate, "/prompt label gate@1 production")
    assert not error and job is not None and "testing gate@1 on colours-eval first" in text
    assert production(gate) is None
    assert wait_final(gate.engine, job).status == "succeeded"
    assert production(gate) == 1 and "gate:production → v1 (was unset)" in thread(gate, job)

    # A worse candidate: compared, refused with both accuracies, p and the cases.
    error, text, job = say(gate, "/prompt label gate@2 production")
    assert job is not None and "stays on v1 for now: comparing gate@2" in text
    assert wait_final(gate.engine, job).status == "succeeded"
    told = thread(gate, job)
    assert "gate:production stays on v1 — significantly worse: gate@2 0.0%" in told
    assert "gate@1 100.0%" in told and "p<0.001" in told and "24 broken" in told
    assert production(gate) == 1
    # Asked again: the same evidence (same versions, dataset and model) answers at once.
    error, text, again = say(gate, "/prompt label gate@2 production")
    assert again is None and "stays on v1 — significantly worse" in text and f"job #{job}" in text

    # A candidate that is not worse moves the label once its comparison finishes.
    error, text, job = say(gate, "/prompt label gate@3 production")
    assert job is not None and production(gate) == 1
    assert wait_final(gate.engine, job).status == "succeeded"
    assert production(gate) == 3 and "gate:production → v3 (was v1): not worse" in \
        thread(gate, job)

    # An admin's override, with its reason in the history; members may not force.
    error, text, _ = say(gate, '/prompt label gate@2 production force reason="x"')
    assert error and "only an admin may force production" in text and production(gate) == 3
    error, text, _ = say(gate, "/prompt label gate@2 production force", ADMIN)
    assert error and 'force needs a reason' in text
    error, text, _ = say(gate, '/prompt label gate@2 production force reason="hotfix for '
                         'the launch"', ADMIN)
    assert not error and production(gate) == 2
    error, text, _ = say(gate, "/prompt history gate")
    assert "⚠ forced: forced by U0ADMIN: hotfix for the launch" in text
    assert "not worse: gate@3 100.0%" in text and "scored 100.0%" in text


def test_a_queued_move_lands_only_if_the_holder_is_unchanged(gate: Core) -> None:
    say(gate, '/prompt label gate@1 production force reason="setup"', ADMIN)
    result = {"summaries": [{"candidate": "gate@1", "accuracy": 1.0, "ci": [0.9, 1.0],
                             "judged": 24},
                            {"candidate": "gate@3", "accuracy": 1.0, "ci": [0.9, 1.0],
                             "judged": 24}],
              "paired": {"p_value": 1.0, "b": 0, "c": 0}}
    pending = {"name": "gate", "label": "production", "to": 3, "expect": 1, "actor": "U0ALICE"}
    say(gate, '/prompt label gate@2 production force reason="moved meanwhile"', ADMIN)
    line = promote.after_job(engine=gate.engine, settings=gate.settings, team_id="T0TEAM",
                             params={"promote": pending}, result=result, job_id=99)
    assert "did not move" in line and "moved to v2 since it was compared (at v1)" in line
    assert production(gate) == 2
