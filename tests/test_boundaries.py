"""The architecture's boundaries, checked where they matter: what importing an entry module
loads in a fresh interpreter, no module-level import cycle, and one table per concept."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest

from devtools import importcheck
from tests.conftest import REPO
from tunebot.commands import SPECS
from tunebot.dispatch import HANDLERS
from tunebot.jobs import KINDS
from tunebot.jobs.queue import QUEUES

ML = ("torch", "transformers", "peft", "sentence_transformers", "matplotlib")
SLACK = ("slack_bolt", "slack_sdk")


def loaded(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("module", "banned"), [
    ("bot.app", (*ML, "workers")),
    ("workers.tasks", (*SLACK, "bot")),
    ("tunebot.commands", (*ML, *SLACK, "bot", "workers", "sqlalchemy", "celery")),
    ("tunebot.modelref", (*ML, *SLACK, "bot", "workers", "sqlalchemy", "celery")),
    ("tunebot.models", (*ML, *SLACK, "bot", "workers")),
    ("tunebot.dispatch", (*ML, *SLACK, "bot", "workers")),
    ("tunebot.cli", (*ML, *SLACK, "bot", "workers")),
])
def test_importing_an_entry_module_loads_only_its_side(module: str, banned: tuple[str, ...]):
    found = loaded(module) & set(banned)
    assert not found, f"importing {module} loaded {sorted(found)}"


def test_no_module_level_import_cycle_and_no_boundary_crossed():
    assert importcheck.cycles(importcheck.graph()) == []
    assert importcheck.boundary_violations() == []


def test_the_cycle_finder_finds_cycles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert importcheck.cycles(edges) == [["a", "b", "c"], ["d"]]


def test_every_command_has_one_handler_and_every_handler_a_command():
    assert set(HANDLERS) == set(SPECS)


def test_the_job_kind_table_names_real_commands_queues_and_runners():
    for kind in KINDS.values():
        assert kind.command in SPECS and SPECS[kind.command].job, kind
        assert kind.queue in QUEUES, kind
        module, _, cls = kind.runner.partition(":")
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file() and re.search(rf"^class {cls}\b", source.read_text(), re.M), kind


def test_policies_are_declared_on_the_specs():
    assert {k for k, s in SPECS.items() if s.policy != "anyone"} == {
        ("finetune", "start"), ("model", "label"), ("compare", "fair")}
    assert all(s.policy in ("anyone", "admin", "finetune") for s in SPECS.values())
    assert {k for k, s in SPECS.items() if s.form} == {("prompt", "new"), ("prompt", "edit")}


def test_the_prompt_version_guard_is_there_without_the_catalog():
    """A worker that never imports tunebot.catalog still cannot change a version."""
    code = """
import sys
from sqlmodel import Session, SQLModel, create_engine
from tunebot.models import Prompt, PromptVersion
from tunebot.errors import UserError
assert not any(m.startswith("tunebot.catalog") for m in sys.modules)
engine = create_engine("sqlite://")
SQLModel.metadata.create_all(engine)
with Session(engine) as s:
    p = Prompt(team_id="T", name="p", owner="U")
    s.add(p); s.flush()
    v = PromptVersion(team_id="T", prompt_id=p.id, version=1, content={}, content_hash="x",
                      author="U")
    s.add(v); s.commit()
    v.message = "changed"
    s.add(v)
    try:
        s.commit()
    except UserError as exc:
        print("refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert "refused: prompt versions are immutable" in out.stdout, out.stderr[-2000:]


def test_bench_and_devtools_never_import_tests():
    for path in [*(REPO / "bench").rglob("*.py"), *(REPO / "devtools").rglob("*.py")]:
        text = path.read_text()
        assert "from tests" not in text and "import tests" not in text, path


def test_the_entry_modules_keep_their_names():
    for name in ("tunebot.cli", "tunebot.commands", "tunebot.models", "bot.app", "workers.tasks"):
        assert importlib.util.find_spec(name) is not None, name
