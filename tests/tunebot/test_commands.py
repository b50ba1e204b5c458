"""The command grammar: every family parses, and bad input answers with the usage line."""

from __future__ import annotations

import pytest

from tunebot.commands import SPECS, Ref, parse
from tunebot.errors import UserError


@pytest.mark.parametrize(("text", "family", "action", "args", "params"), [
    ("/prompt list", "prompt", "list", {"query": ""}, {}),
    ("/prompt list billing emails", "prompt", "list", {"query": "billing emails"}, {}),
    ("/prompt show triage:production", "prompt", "show",
     {"ref": Ref("triage", None, "production")}, {}),
    ("/prompt diff triage@2 triage@3", "prompt", "diff",
     {"ref": Ref("triage", 2), "ref2": Ref("triage", 3)}, {}),
    ("/prompt test triage on triage-eval model=smollm2 samples=3 temperature=0.7 max_tokens=8",
     "prompt", "test", {"ref": Ref("triage"), "dataset": "triage-eval"},
     {"model": "smollm2", "samples": 3, "temperature": 0.7, "max_tokens": 8}),
    ("tunebot prompt label sentiment@2 production", "prompt", "label",
     {"ref": Ref("sentiment", 2), "label": "production"}, {}),
    ("/finetune start smollm2 on triage-train prompt=triage lr=2e-4", "finetune", "start",
     {"m": "smollm2", "dataset": "triage-train"}, {"prompt": "triage", "lr": "2e-4"}),
    ("/finetune cancel #12", "finetune", "cancel", {"job": 12}, {}),
    ("/compare triage vs ft:triage on triage-eval hybrid traffic=5000/day", "compare", "vs",
     {"ref": Ref("triage"), "m": "ft:triage", "dataset": "triage-eval"}, {"traffic": "5000/day"}),
    ("/compare triage on triage-eval", "compare", "name",
     {"name": "triage", "dataset": "triage-eval"}, {}),
    ("/tunebot help prompt", "tunebot", "help", {"topic": "prompt"}, {}),
])
def test_parses(text: str, family: str, action: str, args: dict, params: dict) -> None:
    cmd = parse(text)
    assert (cmd.family, cmd.action, cmd.args, cmd.params) == (family, action, args, params)


def test_slash_command_text_uses_its_family() -> None:
    assert parse("show triage", family="prompt").action == "show"
    assert parse("prompt list", family="tunebot").family == "prompt"


@pytest.mark.parametrize(("text", "message"), [
    ("/prompt frobnicate", "unknown subcommand `frobnicate`"),
    ("/prompt test triage triage-eval", "expected `on`"),
    ("/prompt test triage on", "missing DATASET"),
    ("/prompt test triage on x samples=0", "samples must be between 1 and 20 (got 0)"),
    ("/prompt test triage on x temperature=hot", "temperature must be a number (got hot)"),
    ("/prompt test triage on x colour=red", "unknown option colour"),
    ("/prompt show ../../etc/passwd", "is not a valid reference"),
    ("/dataset show ..", "is not a valid name"),
    ("/prompt show a b", "unexpected `b`"),
    ("/prompt test triage on x samples=2 samples=3", "samples is given twice"),
    ("/dataset check x template=huge", "template must be one of minimal, full"),
    ('/prompt list "unterminated', "could not read the command"),
    ("hello there", "start with one of"),
])
def test_errors_name_the_problem_and_give_usage(text: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        parse(text)
    assert message in str(exc.value)


def test_every_spec_has_a_usage_line_starting_with_its_family() -> None:
    for (family, _), spec in SPECS.items():
        assert spec.usage.startswith(f"/{family}")


def test_overlong_input_is_refused() -> None:
    with pytest.raises(UserError, match="too long"):
        parse("/prompt list " + "x" * 5000)
