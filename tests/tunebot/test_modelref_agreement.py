"""One model-reference grammar: the bot's check (a command's model=) and the worker's loader
accept and refuse exactly the same references."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import make_settings
from tunebot import registry
from tunebot.core import Actor, Core
from tunebot.errors import UserError
from tunebot.handlers.common import check_model
from workers.backends.refs import parse_model_ref, resolve_ft

TEAM = "TA"
LONG = "n" + "x" * 62  # 63 characters: the longest name or label the catalog stores
REFS = [
    # (reference, accepted)
    ("smollm2", True), ("SmolLM2", False), ("SMOLLM2", False), (" smollm2 ", True),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("org/name.v1_2-3", True),
    ("org/name/extra", False), ("org/..name", False), ("../models/x", False), ("gpt2", False),
    ("/models/base", True), ("./models/base", True), ("/models/../etc", False),
    ("/models/base name", False), ("", False),
    ("ft:triage", True), ("ft:triage@1", True), ("ft:triage:production", True),
    ("ft:Triage", False), ("ft:TRIAGE@1", False), ("ft:triage:Production", False),
    ("ft:triage@0", False), ("ft:triage@1234567", False), ("ft:triage@v2", False),
    ("ft:", False), (f"ft:{LONG}", True), (f"ft:{LONG}x", False),
    (f"ft:triage:{LONG}", True), (f"ft:triage:{LONG}x", False),
    ("ft:triage@2", False), ("ft:triage:staging", False), ("ft:missing", False),
    ("openai:gpt-4o-mini", True), ("openai:llama3.1:8b", True), ("openai:org/model", True),
    ("openai:name@v1", False), ("openai:a+b", False), ("openai:", False),
    ("openai:" + "m" * 121, True), ("openai:" + "m" * 122, False),
]


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Core:
    """A workspace with ft:triage@1 (labelled production) and ft:<63 chars>@1."""
    core = Core(make_settings(tmp_path), engine, None)
    for name in ("triage", LONG):
        registry.register(engine=engine, team_id=TEAM, name=name, created_by="U",
                          base_model="smollm2", adapter_path=str(tmp_path / name))
    for label in ("production", LONG):
        registry.set_model_label(engine=engine, team_id=TEAM, name="triage", version=1,
                                 label=label, user="U")
    return core


def bot_accepts(app: Core, ref: str) -> bool:
    try:
        check_model(app, Actor(team_id=TEAM, user_id="U"), ref, "usage")
    except UserError:
        return False
    return True


def worker_accepts(app: Core, ref: str) -> bool:
    try:
        parsed = parse_model_ref(ref, check_exists=False)
        if parsed.kind == "ft":
            resolve_ft(parsed, registry.ft_resolver(app.engine, TEAM))
    except UserError:
        return False
    return True


@pytest.mark.parametrize(("ref", "accepted"), REFS)
def test_bot_and_worker_agree(app: Core, ref: str, accepted: bool) -> None:
    assert (bot_accepts(app, ref), worker_accepts(app, ref)) == (accepted, accepted)
