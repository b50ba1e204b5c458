"""Datasets on SQLite and PostgreSQL: validation, versions, files, soft delete, isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.conftest import make_settings
from tunebot import datasets
from tunebot.core import Actor
from tunebot.errors import Forbidden, NotFound, UserError
from tunebot.settings import Settings

ROWS = [{"text": "great phone", "expected": "positive"},
        {"text": "broke in a week", "expected": "negative"},
        {"text": "love it", "expected": "positive"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def add(engine: Engine, settings: Settings, path: Path, name: str = "reviews",
        team: str = "TA", user: str = "U1") -> tuple:
    return datasets.add_dataset(engine=engine, settings=settings, team_id=team, name=name,
                                path=path, user=user)


def test_add_versions_by_content(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", ROWS)
    ds, created = add(engine, settings, f)
    assert created and ds.version == 1 and ds.row_count == 3 and ds.format == "jsonl"
    assert ds.stats["label_balance"] == {"positive": 2, "negative": 1}
    stored = Path(ds.artifact_path)
    assert stored == (settings.artifacts / "datasets" / "TA" / "reviews-v1.jsonl").resolve()
    assert stored.read_bytes() == f.read_bytes()
    again, created = add(engine, settings, f)
    assert not created and again.id == ds.id
    f2 = write_jsonl(tmp_path / "in2.jsonl", [*ROWS, {"text": "meh", "expected": "negative"}])
    v2, created = add(engine, settings, f2)
    assert created and v2.version == 2 and v2.row_count == 4
    assert datasets.get_dataset(engine=engine, team_id="TA", name="reviews").version == 2
    assert datasets.get_dataset(engine=engine, team_id="TA", name="reviews", version=1).id == ds.id
    with pytest.raises(NotFound, match="no version 7 \\(latest is 2\\)"):
        datasets.get_dataset(engine=engine, team_id="TA", name="reviews", version=7)
    rows = datasets.load_rows(v2)
    assert [r["text"] for r in rows] == ["great phone", "broke in a week", "love it", "meh"]


def test_csv_and_yaml(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text('ticket,expected,assert\n"card charged twice",billing,'
                   '"[{""type"": ""contains"", ""value"": ""bill""}]"\n', encoding="utf-8")
    ds, _ = add(engine, settings, csv, name="tickets")
    assert ds.format == "csv" and Path(ds.artifact_path).suffix == ".csv"
    assert datasets.load_rows(ds)[0]["assert"] == [{"type": "contains", "value": "bill"}]
    yml = tmp_path / "t.yaml"
    yml.write_text("- q: hi\n  expected: hello\n", encoding="utf-8")
    ds, _ = add(engine, settings, yml, name="greet")
    assert ds.format == "yaml" and ds.row_count == 1


def test_bad_file_refused_with_lines(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok", "expected": "positive"}\n{"text": "no answer"}\n{oops\n',
                 encoding="utf-8")
    with pytest.raises(UserError) as exc:
        add(engine, settings, f)
    msg = str(exc.value)
    assert "line 2" in msg and "line 3" in msg and "expected" in msg
    assert datasets.list_datasets(engine=engine, team_id="TA") == []
    assert not (settings.artifacts / "datasets" / "TA").exists()


def test_names_and_team_ids_cannot_escape(engine: Engine, settings: Settings,
                                          tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", ROWS)
    for bad in ("../evil", "a/b", "..", "UPPER", ""):
        with pytest.raises(UserError, match="not a valid dataset name"):
            add(engine, settings, f, name=bad)
    for team in ("../T", "T/../../x", ""):
        with pytest.raises(UserError, match="not a valid workspace"):
            add(engine, settings, f, team=team)


def test_upload_limit(engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_upload_mb=1)
    f = tmp_path / "big.jsonl"
    line = json.dumps({"text": "x" * 1000, "expected": "y"}) + "\n"
    f.write_text(line * 1100, encoding="utf-8")
    with pytest.raises(UserError, match="the limit is 1 MB"):
        add(engine, settings, f)


def test_changed_file_on_disk_detected(engine: Engine, settings: Settings,
                                       tmp_path: Path) -> None:
    ds, _ = add(engine, settings, write_jsonl(tmp_path / "in.jsonl", ROWS))
    write_jsonl(Path(ds.artifact_path), ROWS[:1])
    with pytest.raises(UserError, match="changed on disk"):
        datasets.load_rows(ds)


def test_delete_soft_with_permissions(engine: Engine, settings: Settings,
                                      tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", ROWS)
    add(engine, settings, f, user="U_OWNER")
    with pytest.raises(Forbidden):
        datasets.delete_dataset(engine=engine, team_id="TA", name="reviews",
                                actor=Actor(team_id="TA", user_id="U_OTHER"))
    assert datasets.delete_dataset(engine=engine, team_id="TA", name="reviews",
                                   actor=Actor(team_id="TA", user_id="U_OWNER")) == 1
    assert datasets.list_datasets(engine=engine, team_id="TA") == []
    with pytest.raises(NotFound, match="no dataset `reviews`"):
        datasets.get_dataset(engine=engine, team_id="TA", name="reviews")
    # Adding it again makes a new version; the old file stays.
    ds, created = add(engine, settings, f, user="U_NEW")
    assert created and ds.version == 2
    assert (settings.artifacts / "datasets" / "TA" / "reviews-v1.jsonl").exists()
    assert datasets.delete_dataset(engine=engine, team_id="TA", name="reviews",
                                   actor=Actor(team_id="TA", user_id="U_ADMIN",
                                               is_admin=True)) == 1


def test_workspaces_are_isolated(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", ROWS)
    add(engine, settings, f, team="TA")
    assert datasets.list_datasets(engine=engine, team_id="TB") == []
    with pytest.raises(NotFound):
        datasets.get_dataset(engine=engine, team_id="TB", name="reviews")
    with pytest.raises(NotFound):
        datasets.delete_dataset(engine=engine, team_id="TB", name="reviews",
                                actor=Actor(team_id="TB", user_id="U9", is_admin=True))
    ds_b, created = add(engine, settings, f, team="TB")
    assert created and ds_b.version == 1 and "/TB/" in ds_b.artifact_path
    assert [d.name for d in datasets.list_datasets(engine=engine, team_id="TA")] == ["reviews"]


def _run(app, text: str, actor: Actor, file: Path | None = None):
    from tunebot.commands import parse
    from tunebot.dispatch import execute
    from tunebot.replies import render_text

    o = execute(parse(text), actor, app, file)
    return o.reply.error, render_text(o.reply)


def test_dataset_commands(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    from tunebot.core import Core

    app = Core(settings, engine, None)
    alice, bob = Actor(team_id="TA", user_id="U_A"), Actor(team_id="TA", user_id="U_B")
    other = Actor(team_id="TB", user_id="U_X", is_admin=True)
    f = write_jsonl(tmp_path / "in.jsonl", ROWS * 3)
    is_err, text = _run(app, "/dataset add reviews", alice)
    assert is_err and "attach the data file" in text and "Usage: /dataset add NAME" in text
    is_err, text = _run(app, "/dataset add reviews", alice, f)
    assert not is_err and "Added reviews v1: 9 rows." in text
    is_err, text = _run(app, "/dataset add reviews", bob, f)
    assert not is_err and "No change" in text
    is_err, text = _run(app, "/dataset list", alice)
    assert "reviews" in text and "positive 6 · negative 3" in text
    is_err, text = _run(app, "/dataset show reviews", alice)
    assert not is_err and "positive  6     67%" in text
    assert text.count("great phone") == 2  # five sample rows of a repeating three
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    is_err, text = _run(app, "/dataset add broken", alice, bad)
    assert is_err and "line 1" in text
    assert "No datasets yet" in _run(app, "/dataset list", other)[1]
    assert "no dataset `reviews`" in _run(app, "/dataset show reviews", other)[1]
    assert "no dataset `reviews`" in _run(app, "/dataset delete reviews", other)[1]
    is_err, text = _run(app, "/dataset delete reviews", bob)
    assert is_err and "owner (U_A)" in text
    is_err, text = _run(app, "/dataset delete reviews", alice)
    assert not is_err and "Deleted dataset reviews" in text
    assert "No datasets yet" in _run(app, "/dataset list", alice)[1]
