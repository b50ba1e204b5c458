"""/prompt commands through parse() and execute(), as every transport runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import Engine

from tests.conftest import make_settings
from tunebot.commands import SPECS, parse
from tunebot.core import Actor, Core, Outcome
from tunebot.dispatch import execute
from tunebot.errors import UserError
from tunebot.replies import render_text

ALICE = Actor(team_id="TA", user_id="U_ALICE")
BOB = Actor(team_id="TA", user_id="U_BOB")
ADMIN = Actor(team_id="TA", user_id="U_ADMIN", is_admin=True)
MALLORY = Actor(team_id="TB", user_id="U_MALLORY", is_admin=True)  # admin of another team

FIRST = {
    "name": "triage", "description": "Route support tickets", "tags": ["support"],
    "datasets": {"eval": "triage-eval"},
    "messages": [{"role": "system", "content": "Route the ticket."},
                 {"role": "user", "content": "Ticket: {{ ticket }}\nCategory:"}],
    "variables": {"ticket": "the customer's message"},
    "params": {"temperature": 0, "max_new_tokens": 4},
    "output": {"format": "choice", "choices": ["billing", "technical", "account"]},
    "docs": {"task": "pick one category", "limitations": "multi-issue tickets"},
    "message": "first version",
}


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Core:
    # The production gate is off here: tests/tunebot/test_promotion_gate.py covers it.
    return Core(make_settings(tmp_path, protected_labels=[]), engine, None)


def run(app: Core, text: str, actor: Actor = ALICE, file: Path | None = None) -> Outcome:
    return execute(parse(text), actor, app, file)


def out(app: Core, text: str, actor: Actor = ALICE, file: Path | None = None) -> str:
    o = run(app, text, actor, file)
    assert not o.reply.error, render_text(o.reply)
    return render_text(o.reply)


def err(app: Core, text: str, actor: Actor = ALICE, file: Path | None = None) -> str:
    o = run(app, text, actor, file)
    assert o.reply.error, render_text(o.reply)
    return o.reply.text


def yaml_file(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    f = tmp_path / name
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return f


@pytest.fixture
def triage(app: Core, tmp_path: Path) -> Core:
    """A workspace with triage v1 and v2, production on v1."""
    assert "Saved triage@1" in out(app, "/prompt new", file=yaml_file(tmp_path, FIRST))
    second = {k: v for k, v in FIRST.items() if k not in ("name", "description", "tags",
                                                          "datasets")}
    second["messages"] = [{"role": "system", "content": "Route the ticket. One word."},
                          FIRST["messages"][1]]
    second["params"] = {"temperature": 0.2, "max_new_tokens": 4}
    second["message"] = "terser"
    assert "Saved triage@2" in out(app, "/prompt edit triage",
                                   file=yaml_file(tmp_path, second, "v2.yaml"))
    assert "No change" in out(app, "/prompt edit triage", BOB,
                              file=yaml_file(tmp_path, second, "v2b.yaml"))
    assert "triage:production → v1" in out(app, "/prompt label triage@1 production")
    return app


def test_list_show_history(triage: Core) -> None:
    listing = out(triage, "/prompt list")
    assert "triage" in listing and "production→v1" in listing and "support" in listing
    assert "triage" in out(triage, "/prompt list support tickets")
    assert "No prompt matches" in out(triage, "/prompt list zebra")
    shown = out(triage, "/prompt show triage")  # production, not latest
    assert "triage@1" in shown and "Route the ticket." in shown
    assert "one of: billing | technical | account" in shown
    assert "temperature=0.0" in shown and "multi-issue tickets" in shown
    assert re.search(r"eval set +triage-eval \(not in the catalog\)", shown)
    assert re.search(r"ticket +the customer.s message", shown)
    assert "triage@2" in out(triage, "/prompt show triage@2")
    hist = out(triage, "/prompt history triage")
    assert "terser" in hist and "first version" in hist and "production" in hist
    assert "U_ALICE" in hist


def test_diff_and_label_moves(triage: Core) -> None:
    d = out(triage, "/prompt diff triage@1 triage@2")
    assert "-Route the ticket." in d and "+Route the ticket. One word." in d
    assert "params.temperature" in d
    assert "identical" in out(triage, "/prompt diff triage triage@1")
    assert "→ v2 (was v1)" in out(triage, "/prompt label triage@2 production")
    assert "already points at v2" in out(triage, "/prompt label triage production")
    assert "triage@2" in out(triage, "/prompt show triage:production")


def test_only_owner_or_admin_moves_production(triage: Core) -> None:
    refused = err(triage, "/prompt label triage@2 production", BOB)
    assert "only prompt triage's owner (U_ALICE) or an admin" in refused
    assert "triage@1" in out(triage, "/prompt show triage:production")  # unchanged
    assert "triage:staging → v2" in out(triage, "/prompt label triage@2 staging", BOB)
    assert "→ v2 (was v1)" in out(triage, "/prompt label triage@2 production", ADMIN)


def test_render(triage: Core) -> None:
    text = out(triage, '/prompt render triage ticket="I was charged twice"')
    assert "[user]\nTicket: I was charged twice\nCategory:" in text
    e = err(triage, "/prompt render triage@2")
    assert "missing variable `ticket`" in e and "Usage: /prompt render REF k=v…" in e


def test_errors_name_the_problem(triage: Core, tmp_path: Path) -> None:
    assert err(triage, "/prompt show triage@9") == "triage has no version 9 (latest is 2)"
    assert err(triage, "/prompt show triage:staging") == \
        "triage has no label `staging` (labels: production)"
    assert "no prompt `nope`" in err(triage, "/prompt show nope")
    e = err(triage, "/prompt new")
    assert "needs a YAML file" in e and "Usage: /prompt new" in e
    assert "needs a YAML file" in err(triage, "/prompt edit triage")
    assert "already exists" in err(triage, "/prompt new", file=yaml_file(tmp_path, FIRST))
    bad = dict(FIRST, name="other", params={"temperature": 5})
    assert "params.temperature" in err(triage, "/prompt new", file=yaml_file(tmp_path, bad))
    noname = {k: v for k, v in FIRST.items() if k != "name"}
    assert "needs a `name:`" in err(triage, "/prompt new", file=yaml_file(tmp_path, noname))
    assert "not `triage`" in err(triage, "/prompt edit triage",
                                 file=yaml_file(tmp_path, dict(FIRST, name="x")))
    broken = tmp_path / "broken.yaml"
    broken.write_text("messages: [\n")
    assert "invalid YAML at line 2" in err(triage, "/prompt edit triage", file=broken)


@pytest.mark.parametrize(("text", "usage"), [
    ("/prompt show", "/prompt show REF"),
    ("/prompt diff triage", "/prompt diff REF REF"),
    ("/prompt label triage", "/prompt label REF LABEL"),
    ("/prompt show Bad!Name", "/prompt show REF"),
    ("/prompt history", "/prompt history NAME"),
    ("/prompt delete a b", "/prompt delete NAME"),
    ("/prompt list x=1", "/prompt list [QUERY]"),
])
def test_grammar_errors_give_usage(text: str, usage: str) -> None:
    with pytest.raises(UserError) as exc:
        parse(text)
    assert exc.value.usage == usage == SPECS[("prompt", text.split()[1])].usage


def test_unknown_subcommand_lists_usages() -> None:
    with pytest.raises(UserError) as exc:
        parse("/prompt frobnicate")
    assert exc.value.usage and "/prompt render REF k=v…" in exc.value.usage


def test_delete_permissions(triage: Core) -> None:
    e = err(triage, "/prompt delete triage", BOB)
    assert "only prompt `triage`'s owner (U_ALICE) or an admin" in e
    assert "Deleted prompt triage" in out(triage, "/prompt delete triage", ADMIN)
    assert "no prompt `triage`" in err(triage, "/prompt show triage")
    assert "No prompt" in out(triage, "/prompt list")


def test_owner_may_delete(triage: Core) -> None:
    assert "Deleted prompt triage" in out(triage, "/prompt delete triage", ALICE)
    assert "no prompt `triage`" in err(triage, "/prompt history triage")


def test_other_workspace_sees_nothing(triage: Core) -> None:
    assert "No prompts yet" in out(triage, "/prompt list", MALLORY)
    for text in ("/prompt show triage", "/prompt show triage@1", "/prompt history triage",
                 "/prompt render triage ticket=x", "/prompt label triage@1 production",
                 "/prompt delete triage", "/prompt diff triage@1 triage@2"):
        assert "no prompt `triage` in this workspace" in err(triage, text, MALLORY), text
    # Nothing changed for the owner's workspace.
    assert "triage@1" in out(triage, "/prompt show triage:production")
    assert "production→v1" in out(triage, "/prompt list")
