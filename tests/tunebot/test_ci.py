"""`tunebot ci` without a model: usage errors (exit 2, nothing queued), a candidate that is the
baseline itself, catalog files as candidates, the rule applied to a compare's result, and the
JUnit XML and markdown it writes. tests/workers/test_ci_e2e.py runs it through real jobs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner, Result

from devtools.env import settings_env
from devtools.seed import CONTENT, seed_colours
from tests.conftest import REPO, make_settings
from tunebot import catalog, migrate
from tunebot import ci as gate
from tunebot.cli import cli
from tunebot.commands import Ref
from tunebot.core import Actor, Core
from tunebot.db import make_engine, session_scope
from tunebot.errors import UserError
from tunebot.models import Job
from tunebot.settings import Settings

ACTOR = Actor(team_id="T0TEAM", user_id="U0ALICE", is_admin=True)


def build(tmp_path: Path) -> tuple[Settings, Core]:
    """colours@1 and @2 with production on @2, and colours-eval, on SQLite."""
    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    app = Core(settings, make_engine(settings.database_url), None)
    seed_colours(app.engine, settings, tmp_path)
    with session_scope(app.engine) as s:
        catalog.set_label(session=s, team_id="T0TEAM", ref="colours@2", label="production",
                          user="U0ALICE")
    return settings, app


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Core]:
    """A world of the test's own, the CLI run from its folder (no .env of the checkout)."""
    monkeypatch.chdir(tmp_path)
    return build(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Core]:
    """One world for the usage errors, which change nothing."""
    return build(tmp_path_factory.mktemp("ci"))


def tunebot_ci(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(cli, ["ci", *args], env=settings_env(settings))


def job_count(app: Core) -> int:
    with Session(app.engine) as s:
        return int(s.execute(select(func.count()).select_from(Job)).scalar_one())


@pytest.mark.parametrize(("args", "says"), [
    (["colours@9", "--against", "production", "--on", "colours-eval"],
     "colours has no version 9"),
    (["nope@1", "--against", "production", "--on", "colours-eval"], "no prompt `nope`"),
    (["colours@1", "--against", "colours@2", "--on", "nope"], "no dataset `nope`"),
    (["colours@1", "--against", "colours:staging", "--on", "colours-eval"],
     "colours has no label `staging`"),
    (["colours@1", "--against", "colours@2"], "colours links no eval set"),
    (["colours@1", "--against", "colours@2", "--on", "colours-eval", "--model", "../../etc"],
     "not a model reference"),
    (["colours@1", "--against", "Bad Label!", "--on", "colours-eval"], "neither a label"),
    (["colours@1", "--on", "colours-eval"], "Missing option '--against'"),
    (["--against", "production"], "Missing argument"),
    (["colours@1", "--against", "production", "--junit", "/no/such/dir/out.xml"],
     "no folder /no/such/dir"),
    (["prompts/colours.yaml", "--against", "production"], "no such file: prompts/colours.yaml"),
])
def test_usage_errors_exit_2_and_queue_nothing(shared: Any, args: list[str], says: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    settings, app = shared
    monkeypatch.chdir(settings.var_dir.parent)
    out = tunebot_ci(settings, *args)
    assert out.exit_code == 2, out.output
    assert says in out.stderr and out.stdout == ""
    assert job_count(app) == 0


def test_the_baselines_own_version_passes_without_a_job(world: Any, tmp_path: Path) -> None:
    settings, app = world
    report, summary = tmp_path / "ci.xml", tmp_path / "ci.md"
    # `colours` alone resolves to production, which is the baseline: nothing changed.
    out = tunebot_ci(settings, "colours", "--against", "production", "--on", "colours-eval",
                     "--junit", str(report), "--markdown", str(summary))
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        "✓ colours@2 vs colours@2 on colours-eval: the same version as the baseline: nothing "
        "changed, nothing to measure",
        "tunebot ci: 1 passed, 0 regression(s) (rule: not-worse)"]
    assert job_count(app) == 0
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("1", "0")
    assert summary.read_text().startswith("### tunebot ci: ✅ 1 candidate(s) not worse")


def test_a_catalog_file_stands_for_its_last_version_once_imported(world: Any,
                                                                 tmp_path: Path) -> None:
    settings, app = world
    folder = tmp_path / "prompts"
    folder.mkdir()
    v2 = dict(CONTENT, messages=[CONTENT["messages"][0],
                                 {"role": "user", "content": "Colour: {{ colour }}\nAnswer:"}])
    file = folder / "colours.yaml"
    file.write_text(yaml.safe_dump({"name": "colours", "versions": [CONTENT, v2]}))
    assert gate.candidate_ref(str(file), app, ACTOR) == Ref("colours", 2)
    # A third version in the file that was not imported yet: the command says what to run.
    v3 = dict(v2, tone="terse")
    file.write_text(yaml.safe_dump({"name": "colours", "versions": [CONTENT, v2, v3]}))
    with pytest.raises(UserError, match=r"colours v3 is not in the catalog; run `tunebot "
                                        r"catalog import .*prompts/` first"):
        gate.candidate_ref(str(file), app, ACTOR)
    file.write_text(yaml.safe_dump({"name": "colours", "versions": [CONTENT, v3]}))
    with pytest.raises(UserError, match="its last version differs from colours v2"):
        gate.candidate_ref(str(file), app, ACTOR)
    (folder / "guidelines.yaml").write_text("rules: []\n")
    with pytest.raises(UserError, match="the team's guidelines, not a prompt"):
        gate.candidate_ref(str(folder / "guidelines.yaml"), app, ACTOR)
    # The eval set defaults to the prompt's linked one; --against production is colours@2.
    with session_scope(app.engine) as s:
        prompt = catalog.get_prompt(session=s, team_id="T0TEAM", name="colours")
        catalog.set_metadata(session=s, prompt=prompt, datasets={"eval": "colours-eval"})
    (pair,) = gate.plan(app, ACTOR, ["colours@1"], "production")
    assert (pair.cand_ref, pair.base_ref, pair.dataset) == ("colours@1", "colours@2",
                                                           "colours-eval")
    assert pair.command() == "/prompt compare colours@2 colours@1 on colours-eval"


def compare_job(acc_base: float, acc_cand: float, *, b: int, c: int, p: float,
                n: int = 80) -> Job:
    """A finished prompt_compare job as a worker leaves it (baseline first)."""
    summaries = [{"candidate": name, "cases": n, "accuracy": acc, "ci": [acc - 0.1, acc + 0.1]}
                 for name, acc in (("triage@3", acc_base), ("triage@1", acc_cand))]
    return Job(id=7, team_id="T0TEAM", kind="prompt_compare", queue="inference",
               requested_by="U0ALICE", status="succeeded", params={"model": "smollm2"},
               result={"summaries": summaries, "paired": {"p_value": p, "b": b, "c": c}})


PAIR = gate.Pair({"name": "triage", "version": 1, "version_id": 1},
                 {"name": "triage", "version": 3, "version_id": 3}, "triage-eval", None,
                 "production")


def test_the_team_rule_reads_the_compare_result() -> None:
    worse = gate.judge(PAIR, compare_job(0.70, 0.038, b=53, c=0, p=1e-12), rule="not-worse",
                       minimum=0.0)
    assert not worse.passed and not worse.errored
    assert worse.reason.startswith("significantly worse: triage@1 3.8% (") and "53 broken" in \
        worse.reason and "(job #7)" in worse.reason
    ev = worse.evidence
    assert ev is not None and (ev.fixed, ev.broken, ev.n, ev.job_id) == (0, 53, 80, 7)
    # 2 points lower without significance: the 1-point limit refuses it.
    assert not gate.judge(PAIR, compare_job(0.70, 0.68, b=3, c=1, p=0.62), rule="not-worse",
                          minimum=0.0).passed
    tie = compare_job(0.70, 0.70, b=2, c=2, p=1.0)
    assert gate.judge(PAIR, tie, rule="not-worse", minimum=0.0).passed
    assert not gate.judge(PAIR, tie, rule="better", minimum=0.0).passed
    # A job that failed is no evidence: an error, never a pass.
    failed = compare_job(0.7, 0.7, b=0, c=0, p=1.0)
    failed.status, failed.error = "failed", "the dataset does not fit triage@1"
    verdict = gate.judge(PAIR, failed, rule="not-worse", minimum=0.0)
    assert verdict.errored and not verdict.passed and "does not fit" in verdict.reason
    # No production yet: a first label, judged by the team's minimum on a prompt test.
    first = gate.Pair(PAIR.candidate, None, "triage-eval", None, "production")
    test = compare_job(0.0, 0.4, b=0, c=0, p=1.0)
    test.result = {"summaries": [{"candidate": "triage@1", "cases": 80, "accuracy": 0.4,
                                  "ci": [0.3, 0.5]}]}
    assert gate.judge(first, test, rule="not-worse", minimum=0.3).passed
    low = gate.judge(first, test, rule="not-worse", minimum=0.5)
    assert not low.passed and "below the team's minimum" in low.reason
    assert first.command() == "/prompt test triage@1 on triage-eval"


def test_junit_xml_and_markdown_carry_every_number() -> None:
    worse = gate.judge(PAIR, compare_job(0.70, 0.038, b=53, c=0, p=1e-12), rule="not-worse",
                       minimum=0.0)
    other = gate.Pair({"name": "sum|mary", "version": 2, "version_id": 9},
                      {"name": "sum|mary", "version": 1, "version_id": 8}, "s-eval", "smollm2",
                      "production")
    fine = gate.Verdict(other, True, "not worse: …", job_id=8, seconds=1.5)
    broken = gate.Verdict(other, False, "job #9 failed: bad byte \x00\x1b here", job_id=9,
                          errored=True)
    result = gate.Run([worse, fine, broken], "not-worse")
    assert result.exit_code == 1
    root = ET.fromstring(gate.junit_xml(result))
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "triage@1 vs triage@3 on triage-eval", "sum|mary@2 vs sum|mary@1 on s-eval",
        "sum|mary@2 vs sum|mary@1 on s-eval"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    failure = cases[0].find("failure")
    assert failure is not None and failure.get("type") == "Regression"
    assert "triage@1 3.8%" in (failure.get("message") or "")
    for number in ("3.8% (95% CI", "70.0% (95% CI", "-66.2 pts, p<0.001", "fixed: 0, broken: 53",
                   "job: #7 (tunebot run \"/prompt compare triage@3 triage@1 on triage-eval\")"):
        assert number in (failure.text or ""), failure.text
    assert cases[1].find("failure") is None and cases[1].get("time") == "1.500"
    error = cases[2].find("error")
    assert error is not None and error.get("message") == "job #9 failed: bad byte ?? here"
    md = gate.markdown(result).splitlines()
    assert md[0] == "### tunebot ci: ❌ 2 of 3 candidate(s) refused"
    table = [line for line in md if line.startswith("| ")]
    assert len(table) == 4 and table[1].startswith("| ❌ | triage@1 | triage@3 | triage-eval |")
    assert "sum\\|mary@2" in table[2] and table[3].startswith("| ⚠️ |")


def test_the_sample_workflow_imports_the_catalog_before_the_gate() -> None:
    doc = yaml.safe_load((REPO / "docs/ci-example.yml").read_text())
    assert (REPO / "docs/ci-example.yml").read_text().startswith("# EXAMPLE")
    assert doc[True] == {"pull_request": {"paths": ["prompts/**"]}}  # YAML 1.1 reads `on:`
    runs = [step.get("run", "") for step in doc["jobs"]["gate"]["steps"]]
    imports = [i for i, r in enumerate(runs) if "tunebot catalog import" in r]
    gate_step = next(i for i, r in enumerate(runs) if r.startswith("tunebot ci "))
    assert len(imports) == 2 and max(imports) < gate_step
    assert "--against production" in runs[gate_step] and "--junit" in runs[gate_step]
