"""Training files (chat, prompt/completion) are datasets too, refused with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import make_settings
from tunebot import datasets
from tunebot.errors import UserError


def chat(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                    {"role": "assistant", "content": f"answer {i}"}]})


def test_chat_file_is_stored_as_training_data(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(chat(i) for i in range(12)) + "\n")
    ds, created = datasets.add_dataset(engine=engine, settings=settings, team_id="T1",
                                       name="support-train", path=path, user="U1")
    assert created and ds.row_count == 12 and ds.stats["kind"] != "rows"
    with pytest.raises(UserError, match="is training data"):
        datasets.load_rows(ds)


def test_broken_chat_file_is_refused_with_line_and_field(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    lines = [chat(i) for i in range(12)]
    lines[6] = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as exc:
        datasets.add_dataset(engine=engine, settings=settings, team_id="T1", name="bad",
                             path=path, user="U1")
    assert "line 7" in str(exc.value) and "unrecognized_role" in str(exc.value)
