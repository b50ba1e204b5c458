"""Model references: every accepted spelling, and a clear error for the rest."""

from pathlib import Path

import pytest

from tunebot.errors import UserError
from workers.backends.refs import ModelRef, ModelRefError, parse_model_ref, resolve_ft


@pytest.mark.parametrize(
    ("text", "kind", "name", "version", "label"),
    [
        ("smollm2", "bundled", "smollm2", None, None),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct",
         None, None),
        ("ft:triage", "ft", "triage", None, None),
        ("ft:triage@3", "ft", "triage", 3, None),
        ("ft:triage:production", "ft", "triage", None, "production"),
        ("openai:gpt-4o-mini", "openai", "gpt-4o-mini", None, None),
        ("openai:llama3.1:8b", "openai", "llama3.1:8b", None, None),
    ],
)
def test_accepted_refs(text: str, kind: str, name: str, version: int | None,
                       label: str | None) -> None:
    ref = parse_model_ref(text)
    assert (ref.kind, ref.name, ref.version, ref.label) == (kind, name, version, label)


@pytest.mark.parametrize(
    "text", ["ft:triage@3", "ft:triage:production", "openai:gpt-4o", "smollm2"]
)
def test_str_round_trips(text: str) -> None:
    assert str(parse_model_ref(text)) == text


def test_absolute_and_dot_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    assert parse_model_ref(str(tmp_path / "m")) == ModelRef("path", str(tmp_path / "m"))
    monkeypatch.chdir(tmp_path)
    assert parse_model_ref("./m").name == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no model"),
        ("gpt2", "unknown model 'gpt2'"),
        ("SmolLM2", "unknown model 'SmolLM2'"),  # the bot's grammar: the bundled name is lower case
        ("org/name/extra", "unknown model"),
        ("ft:", "not a valid fine-tuned"),
        ("ft:x@0", "versions start at 1"),
        ("ft:x@v2", "not a valid fine-tuned"),
        ("openai:", "not a valid openai"),
        ("../models/x", "unknown model"),
        ("org/..name", "unknown model"),
    ],
)
def test_rejected_refs(text: str, needle: str) -> None:
    with pytest.raises(ModelRefError, match=needle) as info:
        parse_model_ref(text)
    assert isinstance(info.value, UserError)
    assert "smollm2" in (info.value.usage or "")


def test_path_traversal_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelRefError, match=r"may not contain '\.\.'"):
        parse_model_ref(f"{tmp_path}/../etc")
    with pytest.raises(ModelRefError, match="not a folder on this worker"):
        parse_model_ref(str(tmp_path / "missing"))
    assert parse_model_ref(str(tmp_path / "missing"), check_exists=False).kind == "path"


def test_resolve_ft_goes_through_the_resolver(tmp_path: Path) -> None:
    seen = []

    def resolver(name: str, version: int | None, label: str | None) -> tuple[str, Path]:
        seen.append((name, version, label))
        return "smollm2", tmp_path

    base, adapter = resolve_ft(parse_model_ref("ft:triage:production"), resolver)
    assert (base.kind, adapter, seen) == ("bundled", tmp_path, [("triage", None, "production")])


def test_resolve_ft_refuses_without_registry_or_remote_base(tmp_path: Path) -> None:
    ref = parse_model_ref("ft:triage")
    with pytest.raises(ModelRefError, match="needs the model registry"):
        resolve_ft(ref, None)
    with pytest.raises(ModelRefError, match="cannot carry a LoRA adapter"):
        resolve_ft(ref, lambda *_: ("openai:gpt-4o", tmp_path))
