"""The catalog on disk: import (idempotent, per-file failures), export round trip, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import Engine

from tests.conftest import REPO, make_settings, settings_env
from tunebot import catalog, datasets, migrate
from tunebot.catalog.files import export_dir, import_dir, load_yaml
from tunebot.db import make_engine, session_scope
from tunebot.errors import UserError
from tunebot.settings import Settings

SENTIMENT = {
    "name": "sentiment",
    "description": "Product review sentiment",
    "owner": "U_ALICE",
    "tags": ["classification", "reviews"],
    "datasets": {"eval": "sentiment-eval", "train": "sentiment-train"},
    "labels": {"production": 2},
    "versions": [
        {"author": "U_ALICE", "message": "first try",
         "template": "Review: {{ text }}\nSentiment:",
         "variables": {"text": "the review"}},
        {"author": "U_BOB", "message": "chat with choices",
         "messages": [
             {"role": "system", "content": "You label reviews.\nAnswer with one word.  \n"},
             {"role": "user", "content": "Review: {{ text }}\nAnswer positive or negative."}],
         "variables": {"text": "the review"},
         "model": "smollm2",
         "params": {"temperature": 0, "max_new_tokens": 3, "stop": ["\n"]},
         "output": {"format": "choice", "choices": ["positive", "negative"]},
         "scorers": ["exact"],
         "tone": "terse",
         "docs": {"context": "Shop reviews.", "task": "One word label.",
                  "limitations": "Sarcasm: it: fails\n# not a comment",
                  "examples": [{"input": {"text": "great"}, "output": "positive"}]}},
    ],
}
EXTRACT = {
    "name": "extract",
    "description": "Pull a name out as JSON",
    "versions": [{"template": "Text: {{ text }}\nJSON:", "variables": {"text": "input"},
                  "output": {"format": "json", "schema": {
                      "type": "object", "properties": {"name": {"type": "string"}}}}}],
}


def write_catalog(root: Path) -> Path:
    (root / "datasets").mkdir(parents=True)
    for name, prompt in (("sentiment", SENTIMENT), ("extract", EXTRACT)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(prompt, sort_keys=False))
    rows = [{"text": f"review {i}", "expected": "positive" if i % 2 else "negative"}
            for i in range(10)]
    (root / "datasets" / "sentiment-eval.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (root / "datasets" / "sentiment-train.csv").write_text(
        "text,expected\n" + "".join(f"t{i},positive\n" for i in range(5)))
    (root / "README.md").write_text("not a prompt")
    return root


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def run_import(engine: Engine, settings: Settings, path: Path, team: str = "TA"):
    return import_dir(engine=engine, settings=settings, team_id=team, user="U_CLI", path=path)


def status_of(report) -> dict[str, str]:
    return {f.path: f.status for f in report.files}


def test_import_is_idempotent(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    root = write_catalog(tmp_path / "prompts")
    first = run_import(engine, settings, root)
    assert status_of(first) == {
        "prompts/datasets/sentiment-eval.jsonl": "created",
        "prompts/datasets/sentiment-train.csv": "created",
        "prompts/extract.yaml": "created", "prompts/sentiment.yaml": "created"}, first.lines()
    assert first.ok and first.count("created") == 4
    second = run_import(engine, settings, root)
    assert set(status_of(second).values()) == {"unchanged"}, second.lines()
    with session_scope(engine) as s:
        v = catalog.resolve(session=s, team_id="TA", ref="sentiment")
        assert v.version == 2 and v.author == "U_BOB" and v.message == "chat with choices"
        p = catalog.get_prompt(session=s, team_id="TA", name="sentiment")
        assert p.owner == "U_ALICE" and p.datasets == SENTIMENT["datasets"]
        assert p.tags == ["classification", "reviews"]
        assert catalog.labels_of(session=s, team_id="TA", name="sentiment") == {"production": 2}
    assert datasets.get_dataset(engine=engine, team_id="TA", name="sentiment-eval").row_count == 10


def test_import_updates_and_conflicts(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    # Labels move as the file says here: protected labels are covered by
    # test_an_import_never_moves_a_protected_label_unless_forced.
    settings = settings.model_copy(update={"protected_labels": []})
    root = write_catalog(tmp_path / "prompts")
    run_import(engine, settings, root)
    doc = dict(SENTIMENT)
    v3 = dict(SENTIMENT["versions"][1], message="v3", tone="friendly")
    doc["versions"] = [*SENTIMENT["versions"], v3]
    doc["labels"] = {"production": 3, "staging": 2}
    (root / "sentiment.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    report = run_import(engine, settings, root)
    item = next(f for f in report.files if f.name == "sentiment")
    assert item.status == "updated"
    assert "v3" in item.detail and "production v2 → v3" in item.detail
    with session_scope(engine) as s:
        assert catalog.labels_of(session=s, team_id="TA", name="sentiment") == {
            "production": 3, "staging": 2}
        moves = catalog.history(session=s, team_id="TA", name="sentiment").moves
        assert [(m.label, m.from_version, m.to_version) for m in moves][-2:] == [
            ("production", 2, 3), ("staging", None, 2)]
    # Rewriting an existing version is refused for that file only.
    doc["versions"][0] = dict(doc["versions"][0], template="Changed: {{ text }}")
    (root / "sentiment.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    report = run_import(engine, settings, root)
    bad = next(f for f in report.files if f.name == "sentiment")
    assert bad.status == "failed" and "differs from sentiment v1" in bad.detail
    assert report.failed == 1 and status_of(report)["prompts/extract.yaml"] == "unchanged"


def test_broken_files_fail_alone(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    root = write_catalog(tmp_path / "prompts")
    (root / "broken.yaml").write_text("name: broken\nversions:\n  - template: [unclosed\n"
                                      "    variables: {}\n")
    (root / "wrongname.yaml").write_text(yaml.safe_dump({"name": "other", "versions": [
        {"template": "x"}]}))
    (root / "badtemp.yaml").write_text(yaml.safe_dump({"versions": [
        {"template": "{{ x }}", "variables": {"x": "y"}, "params": {"temperature": 9}}]}))
    (root / "undeclared.yaml").write_text(yaml.safe_dump({"versions": [
        {"template": "{{ x }} {{ y }}", "variables": {"x": "y"}}]}))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
        for i in range(8))
    (root / "aliases.yaml").write_text(laughs)
    (root / "datasets" / "bad-rows.jsonl").write_text('{"text": "no answer"}\n')
    report = run_import(engine, settings, root)
    failed = {f.path: f.detail for f in report.files if f.status == "failed"}
    assert set(failed) == {"prompts/broken.yaml", "prompts/wrongname.yaml",
                           "prompts/badtemp.yaml", "prompts/undeclared.yaml",
                           "prompts/aliases.yaml", "prompts/datasets/bad-rows.jsonl"}
    assert "line 4" in failed["prompts/broken.yaml"]
    assert "does not match the file name" in failed["prompts/wrongname.yaml"]
    assert "versions[0].params.temperature" in failed["prompts/badtemp.yaml"]
    assert "`y`" in failed["prompts/undeclared.yaml"]
    assert "too many aliases" in failed["prompts/aliases.yaml"]
    assert "line 1" in failed["prompts/datasets/bad-rows.jsonl"]
    assert report.count("created") == 4
    with session_scope(engine) as s:
        names = [p.prompt.name for p in catalog.list_prompts(session=s, team_id="TA")]
    assert names == ["extract", "sentiment"]


def test_export_round_trips(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    root = write_catalog(tmp_path / "prompts")
    assert run_import(engine, settings, root).ok
    out = tmp_path / "exported"
    report = export_dir(engine=engine, settings=settings, team_id="TA", path=out)
    assert report.ok and report.count("written") == 4
    assert (out / "datasets" / "sentiment-train.csv").read_bytes() == \
        (root / "datasets" / "sentiment-train.csv").read_bytes()
    exported = load_yaml(out / "sentiment.yaml")
    assert exported["labels"] == {"production": 2}
    assert "|" in (out / "sentiment.yaml").read_text()  # multi-line text stays readable
    # Importing the export into a fresh workspace gives the same versions, hashes and labels.
    again = run_import(engine, settings, out, team="TC")
    assert again.ok and again.count("created") == 4, again.lines()
    # Importing it over the original changes nothing.
    assert set(status_of(run_import(engine, settings, out)).values()) == {"unchanged"}
    with session_scope(engine) as s:
        for name in ("sentiment", "extract"):
            pa = catalog.get_prompt(session=s, team_id="TA", name=name)
            pc = catalog.get_prompt(session=s, team_id="TC", name=name)
            ha = [v.content_hash for v in catalog.versions_of(session=s, prompt=pa)]
            hc = [v.content_hash for v in catalog.versions_of(session=s, prompt=pc)]
            assert ha == hc and ha
            assert catalog.labels_of(session=s, team_id="TA", name=name) == \
                catalog.labels_of(session=s, team_id="TC", name=name)
            assert (pa.description, pa.tags, pa.owner, pa.datasets) == \
                (pc.description, pc.tags, pc.owner, pc.datasets)
    for name in ("sentiment-eval", "sentiment-train"):
        a = datasets.get_dataset(engine=engine, team_id="TA", name=name)
        c = datasets.get_dataset(engine=engine, team_id="TC", name=name)
        assert a.content_hash == c.content_hash


def test_deleted_prompt_restored_by_import(engine: Engine, settings: Settings,
                                           tmp_path: Path) -> None:
    from tunebot.core import Actor

    root = write_catalog(tmp_path / "prompts")
    run_import(engine, settings, root)
    with session_scope(engine) as s:
        catalog.delete(session=s, team_id="TA", name="extract",
                       actor=Actor(team_id="TA", user_id="U_ADMIN", is_admin=True))
    report = run_import(engine, settings, root)
    item = next(f for f in report.files if f.name == "extract")
    assert item.status == "updated" and "restored" in item.detail


def test_load_yaml_errors(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("a: 1\nb: [\n")
    with pytest.raises(UserError, match=r"x.yaml: invalid YAML at line \d"):
        load_yaml(f)


def test_real_catalog_imports_cleanly(engine: Engine, settings: Settings) -> None:
    report = run_import(engine, settings, REPO / "prompts")
    assert report.failed == 0, "\n".join(report.lines())
    names = {f.name for f in report.files if f.kind == "prompt"}
    assert {"sentiment", "triage"} <= names
    linked = []
    with session_scope(engine) as s:
        for name in ("sentiment", "triage"):
            p = catalog.get_prompt(session=s, team_id="TA", name=name)
            assert len(catalog.versions_of(session=s, prompt=p)) >= 2
            assert "production" in catalog.labels_of(session=s, team_id="TA", name=name)
            linked += [(role, p.datasets[role]) for role in ("eval", "train")]
    for role, ds_name in linked:  # outside the session: SQLite allows one writer at a time
        ds = datasets.get_dataset(engine=engine, team_id="TA", name=ds_name)
        assert ds.row_count >= (64 if role == "eval" else 100)
    assert set(status_of(run_import(engine, settings, REPO / "prompts")).values()) == {
        "unchanged"}


def _cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunebot.cli", *args], cwd=REPO,
                          env=settings_env(settings), capture_output=True, text=True,
                          timeout=120)


def test_cli_import_then_show(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    root = write_catalog(tmp_path / "prompts")
    done = _cli(["catalog", "import", str(root)], settings)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prompts/sentiment.yaml: created" in done.stdout
    shown = _cli(["run", "/prompt show sentiment:production"], settings)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "sentiment@2" in shown.stdout and "You label reviews." in shown.stdout
    assert "sentiment-eval (v1, 10 rows)" in shown.stdout
    again = _cli(["catalog", "import", str(root)], settings)
    assert again.returncode == 0 and "4 unchanged" in again.stdout
    (root / "broken.yaml").write_text("versions: [\n")
    failed = _cli(["catalog", "import", str(root)], settings)
    assert failed.returncode == 1 and "broken.yaml: failed" in failed.stdout
    out = tmp_path / "out"
    exported = _cli(["catalog", "export", str(out)], settings)
    assert exported.returncode == 0 and (out / "sentiment.yaml").is_file()
    added = _cli(["dataset", "add", "more", str(root / "datasets" / "sentiment-eval.jsonl")],
                 settings)
    assert added.returncode == 0 and "created — more v1, 10 rows" in added.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    refused = _cli(["dataset", "add", "bad", str(bad)], settings)
    assert refused.returncode == 1 and "line 1" in refused.stdout


def test_an_import_never_moves_a_protected_label_unless_forced(tmp_path: Path) -> None:
    from tunebot.commands import Ref

    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    first = import_dir(engine=engine, settings=settings, team_id="TP", user="U1",
                       path=REPO / "prompts")
    assert first.ok
    with session_scope(engine) as s:
        assert catalog.labels_of(session=s, team_id="TP", name="triage")["production"] == 3
        catalog.set_label(session=s, team_id="TP", ref=Ref("triage", version=1),
                          label="production", user="U1")
    again = import_dir(engine=engine, settings=settings, team_id="TP", user="U1",
                       path=REPO / "prompts")
    assert any("triage.yaml: unchanged — production stays on v1 (the file says v3" in line
               for line in again.lines()), again.lines()
    with session_scope(engine) as s:
        assert catalog.labels_of(session=s, team_id="TP", name="triage")["production"] == 1
    forced = import_dir(engine=engine, settings=settings, team_id="TP", user="U1",
                        path=REPO / "prompts", force=True)
    assert any("production v1 → v3" in line for line in forced.lines()), forced.lines()
    engine.dispose()
