"""Team guidelines: each rule on constructed versions, the YAML form, and the starter catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tunebot.catalog import guidelines
from tunebot.catalog.content import parse_content
from tunebot.errors import UserError

GOOD = {
    "messages": [{"role": "system", "content": "You route support tickets. Answer with one "
                                               "word: billing or technical."},
                 {"role": "user", "content": "Ticket: {{ ticket }}"}],
    "variables": {"ticket": "the customer's ticket"},
    "params": {"max_new_tokens": 4},
    "output": {"format": "choice", "choices": ["billing", "technical"]},
    "tone": "neutral",
    "docs": {"context": "support inbox", "task": "pick the queue",
             "limitations": "72.5% on triage-eval; confuses account and billing",
             "examples": [{"input": {"ticket": "double charge"}, "output": "billing"},
                          {"input": {"ticket": "app crashes"}, "output": "technical"}]},
}


def rules_of(content: dict) -> set[str]:
    return {f.rule for f in guidelines.check(parse_content(content).canonical())}


def test_a_complete_version_passes() -> None:
    assert rules_of(GOOD) == set()


@pytest.mark.parametrize(("change", "rule"), [
    ({"messages": [{"role": "user", "content": "billing or technical? {{ ticket }}"}]},
     "context"),
    ({"docs": {**GOOD["docs"], "task": ""}}, "task"),
    ({"output": {"format": "json"}, "messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "{{ ticket }}"}]}, "output-format"),
    ({"output": {"format": "text"}, "params": {}}, "output-format"),
    ({"output": {"format": "choice", "choices": ["billing", "shipping"]}}, "format-in-prompt"),
    ({"docs": {**GOOD["docs"], "examples": []}}, "examples"),
    ({"variables": {"ticket": ""}}, "variables-documented"),
    ({"tone": ""}, "tone"),
    ({"messages": [{"role": "system", "content": "Route {{ ticket }} to billing or technical"},
                   {"role": "user", "content": "Answer."}]}, "no-user-vars-in-system"),
    ({"docs": {**GOOD["docs"], "limitations": "MEASURED_V1"}}, "limitations-measured"),
    ({"docs": {**GOOD["docs"], "limitations": "sometimes wrong"}}, "limitations-measured"),
    ({"messages": [{"role": "system", "content": "billing or technical. " + "x" * 9000},
                   {"role": "user", "content": "{{ ticket }}"}]}, "prompt-tokens"),
])
def test_each_rule_finds_what_it_names(change: dict, rule: str) -> None:
    found = guidelines.check(parse_content({**GOOD, **change}).canonical())
    assert rule in {f.rule for f in found}
    finding = next(f for f in found if f.rule == rule)
    assert finding.field and finding.fix and finding.line().endswith(f"[{rule}]")


def test_the_team_sets_severities_and_parameters() -> None:
    rules = guidelines.parse_guidelines({"rules": {"examples": {"severity": "error", "min": 3},
                                                   "tone": "off"}})
    by_id = {r.id: r for r in rules}
    assert by_id["examples"].severity == "error" and by_id["examples"].params["min"] == 3
    found = guidelines.check(parse_content({**GOOD, "tone": ""}).canonical(), rules)
    assert [f.rule for f in guidelines.errors(found)] == ["examples"]
    assert "tone" not in {f.rule for f in found}
    doc = guidelines.guidelines_document(rules)
    assert guidelines.parse_guidelines(doc) == rules  # round-trips through YAML's shape
    with pytest.raises(UserError, match="unknown rule `exampels`"):
        guidelines.parse_guidelines({"rules": {"exampels": "error"}})
    with pytest.raises(UserError, match=r"rules.tone must be one of error, warning, off"):
        guidelines.parse_guidelines({"rules": {"tone": "fatal"}})
    with pytest.raises(UserError, match=r"rules.examples.min must be a whole number"):
        guidelines.parse_guidelines({"rules": {"examples": {"min": -1}}})


def test_the_model_tokenizer_counts_when_given() -> None:
    rules = guidelines.parse_guidelines({"rules": {"prompt-tokens": {"max": 10}}})
    words = guidelines.check(parse_content(GOOD).canonical(), rules,
                             count_tokens=lambda text: len(text.split()))
    assert any(f.rule == "prompt-tokens" and "about" not in f.message for f in words)


def test_lint_finds_the_missing_parts_of_the_starter_first_versions() -> None:
    rules = guidelines.parse_guidelines(yaml.safe_load(
        (REPO / "prompts/guidelines.yaml").read_text()))
    for path in sorted(Path(REPO / "prompts").glob("*.yaml")):
        if path.name == "guidelines.yaml":
            continue
        versions = yaml.safe_load(path.read_text())["versions"]
        first = guidelines.check(parse_content(versions[0]).canonical(), rules)
        assert "context" in {f.rule for f in first}, path.name  # v1s are bare instructions
        for v in versions:  # every starter version still saves: no error rule is broken
            assert guidelines.errors(guidelines.check(parse_content(v).canonical(), rules)) \
                == [], path.name


# ---- wired in: import, save, /prompt lint, export ---------------------------------------------

def test_the_team_guidelines_gate_saving_and_lint_names_the_fields(tmp_path: Path) -> None:
    from tests.conftest import make_settings
    from tunebot import migrate
    from tunebot.catalog.files import export_dir, import_dir
    from tunebot.commands import parse
    from tunebot.core import Actor, Core
    from tunebot.db import make_engine
    from tunebot.dispatch import execute
    from tunebot.replies import render_text

    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    core = Core(settings, make_engine(settings.database_url), None)
    actor = Actor(team_id="TG", user_id="U1", is_admin=True)
    report = import_dir(engine=core.engine, settings=settings, team_id="TG", user="U1",
                        path=REPO / "prompts")
    assert report.ok, report.lines()
    assert any("guidelines.yaml: updated" in line for line in report.lines())
    again = import_dir(engine=core.engine, settings=settings, team_id="TG", user="U1",
                       path=REPO / "prompts")
    assert any("guidelines.yaml: unchanged" in line for line in again.lines())

    def run(text: str, file: Path | None = None) -> tuple[bool, str]:
        out = execute(parse(text), actor, core, file)
        return out.reply.error, render_text(out.reply)

    error, text = run("/prompt lint triage@1")
    assert not error and "⚠ messages: no system message sets the context" in text
    assert "[examples]" in text
    error, text = run("/prompt lint triage@3")
    assert not error and "follows every guideline" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "routing", **{k: v for k, v in GOOD.items()
                                                         if k != "docs"}}))
    error, text = run("/prompt new", bad)
    assert error and "breaks the team's guidelines" in text and "✗ docs.task:" in text
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"name": "routing", **GOOD}))
    error, text = run("/prompt new", good)
    assert not error and "Saved routing@1." in text
    out = tmp_path / "export"
    export_dir(engine=core.engine, settings=settings, team_id="TG", path=out)
    exported = yaml.safe_load((out / "guidelines.yaml").read_text())
    assert guidelines.parse_guidelines(exported) == guidelines.parse_guidelines(
        yaml.safe_load((REPO / "prompts/guidelines.yaml").read_text()))
    core.engine.dispose()
