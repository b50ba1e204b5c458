"""Seed data the tests and the benchmarks share: the colours prompt and its eval rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from tunebot import catalog, datasets
from tunebot.db import session_scope
from tunebot.settings import Settings

CONTENT: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Classify the colour as warm or cool. Answer one word."},
        {"role": "user", "content": "colour: {{ colour }}"},
    ],
    "variables": {"colour": "a colour name"},
    "params": {"temperature": 0.0, "max_new_tokens": 4},
    "output": {"format": "choice", "choices": ["warm", "cool"]},
}
ROWS = [{"colour": c, "expected": w} for c, w in
        [("red", "warm"), ("orange", "warm"), ("yellow", "warm"), ("blue", "cool"),
         ("green", "cool"), ("purple", "cool"), ("pink", "warm"), ("teal", "cool")] * 3]


def seed_colours(engine: Engine, settings: Settings, tmp_path: Path, *, team: str = "T0TEAM",
                 user: str = "U0ALICE", versions: int = 2) -> None:
    """The colours prompt (v1, and v2 asking for the answer) and its eval set in `team`."""
    v2 = dict(CONTENT, messages=[CONTENT["messages"][0],
                                 {"role": "user", "content": "Colour: {{ colour }}\nAnswer:"}])
    with session_scope(engine) as s:
        for content, message in [(CONTENT, "v1"), (v2, "v2")][:versions]:
            catalog.save_version(session=s, team_id=team, name="colours", content=content,
                                 author=user, message=message)
    data = tmp_path / "colours-eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.add_dataset(engine=engine, settings=settings, team_id=team, name="colours-eval",
                         path=data, user=user)
