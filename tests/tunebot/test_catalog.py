"""The catalog service on SQLite and PostgreSQL: versions, dedupe, labels, refs, search, delete."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tunebot import catalog
from tunebot.commands import Ref
from tunebot.core import Actor
from tunebot.db import session_scope
from tunebot.errors import Forbidden, NotFound, UserError
from tunebot.models import LabelHistory, PromptVersion

TEAM = "TA"
OTHER = "TB"


def content(system: str = "Classify the sentiment.", **over: Any) -> dict[str, Any]:
    """A small valid chat version."""
    base: dict[str, Any] = {
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": "Review: {{ text }}"}],
        "variables": {"text": "the review"},
        "params": {"temperature": 0, "max_new_tokens": 4},
        "output": {"format": "choice", "choices": ["positive", "negative"]},
        "docs": {"task": "label reviews", "limitations": "no sarcasm"},
    }
    base.update(over)
    return base


def save(engine: Engine, name: str = "sentiment", team: str = TEAM, user: str = "U1",
         **kw: Any) -> tuple[PromptVersion, bool]:
    data = kw.pop("data", None) or content(**kw)
    with session_scope(engine) as s:
        return catalog.save_version(session=s, team_id=team, name=name, content=data,
                                    author=user, message="m")


def test_save_creates_and_dedupes(engine: Engine) -> None:
    v1, created = save(engine)
    assert created and v1.version == 1
    again, created = save(engine, user="U2")
    assert not created and again.version == 1 and again.id == v1.id
    # Defaults written out explicitly are the same content.
    data = content()
    data["params"]["stop"] = []
    data["tone"] = ""
    same, created = save(engine, data=data)
    assert not created and same.content_hash == v1.content_hash
    v2, created = save(engine, system="Classify the sentiment carefully.")
    assert created and v2.version == 2
    with session_scope(engine) as s:
        prompt = catalog.get_prompt(session=s, team_id=TEAM, name="sentiment")
        assert prompt.owner == "U1"
        assert [v.version for v in catalog.versions_of(session=s, prompt=prompt)] == [1, 2]


def test_versions_are_immutable(engine: Engine) -> None:
    v1, _ = save(engine)
    public = [n for n, f in inspect.getmembers(catalog, inspect.isfunction)
              if f.__module__.startswith(catalog.__name__) and not n.startswith("_")]
    assert not [n for n in public if any(w in n for w in ("update", "edit", "modify", "replace"))]
    with pytest.raises(UserError, match="immutable"), session_scope(engine) as s:
        row = s.get(PromptVersion, v1.id)
        assert row is not None
        row.message = "rewritten"
        s.add(row)
    with session_scope(engine) as s:
        assert s.get(PromptVersion, v1.id).message == "m"  # type: ignore[union-attr]
    with pytest.raises(UserError, match="never deleted"), session_scope(engine) as s:
        s.delete(s.get(PromptVersion, v1.id))


@pytest.mark.parametrize(("over", "fragment"), [
    ({"params": {"temperature": 3}}, "params.temperature"),
    ({"params": {"max_new_tokens": 5000}}, "params.max_new_tokens"),
    ({"params": {"top_p": 1.5}}, "params.top_p"),
    ({"output": {"format": "choice", "choices": ["a"]}}, "two distinct"),
    ({"output": {"format": "json", "schema": {"type": "nonsense"}}}, "valid JSON Schema"),
    ({"output": {"format": "text", "schema": {"type": "object"}}}, "only goes with"),
    ({"template": "x"}, "not both"),
    ({"temprature": 1}, "temprature: unknown field"),
    ({"variables": {"expected": "the answer"}}, "reserved"),
    ({"variables": {"1bad": "x"}}, "not a valid name"),
])
def test_bad_content_is_refused_with_the_field(engine: Engine, over: dict[str, Any],
                                               fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        save(engine, **over)


def test_templates_checked_on_save(engine: Engine) -> None:
    with pytest.raises(UserError, match="not declared: `other`"):
        save(engine, system="{{ other }}")
    with pytest.raises(UserError, match="syntax error at line 2"):
        save(engine, system="fine\n{% if %}")
    with pytest.raises(UserError, match="template refused"):
        save(engine, system="{{ cycler.__init__.__globals__ }}")
    with pytest.raises(UserError, match="not allowed"):  # only visible when it runs
        save(engine, system="{{ text|attr('__cl' ~ 'ass__') }}")
    with session_scope(engine) as s, pytest.raises(NotFound):
        catalog.get_prompt(session=s, team_id=TEAM, name="sentiment")


def test_json_output_with_schema(engine: Engine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}},
              "required": ["name"]}
    v, created = save(engine, output={"format": "json", "schema": schema})
    assert created and v.content["output"]["schema"] == schema


def test_labels_move_with_history(engine: Engine) -> None:
    save(engine)
    save(engine, system="v2")
    save(engine, system="v3")
    with session_scope(engine) as s:
        m = catalog.set_label(session=s, team_id=TEAM, ref=Ref("sentiment", 1),
                              label="production", user="U1")
        assert (m.from_version, m.to_version, m.moved) == (None, 1, True)
        m = catalog.set_label(session=s, team_id=TEAM, ref="sentiment@3", label="production",
                              user="U2")
        assert (m.from_version, m.to_version) == (1, 3)
        m = catalog.set_label(session=s, team_id=TEAM, ref="sentiment@3", label="production",
                              user="U2")
        assert not m.moved
        catalog.set_label(session=s, team_id=TEAM, ref="sentiment:production", label="staging",
                          user="U3")
    with session_scope(engine) as s:
        assert catalog.labels_of(session=s, team_id=TEAM, name="sentiment") == {
            "production": 3, "staging": 3}
        h = catalog.history(session=s, team_id=TEAM, name="sentiment")
        assert [v.version for v in h.versions] == [1, 2, 3]
        assert [(m.label, m.from_version, m.to_version, m.moved_by) for m in h.moves] == [
            ("production", None, 1, "U1"), ("production", 1, 3, "U2"), ("staging", None, 3, "U3")]
        assert all(m.moved_at is not None for m in h.moves)
        with pytest.raises(UserError, match="not a valid label"):
            catalog.set_label(session=s, team_id=TEAM, ref="sentiment", label="Bad Label",
                              user="U1")


def test_resolve_every_form(engine: Engine) -> None:
    save(engine)
    save(engine, system="v2")
    with session_scope(engine) as s:
        assert catalog.resolve(session=s, team_id=TEAM, ref="sentiment").version == 2
        assert catalog.resolve(session=s, team_id=TEAM, ref=Ref("sentiment", 1)).version == 1
        catalog.set_label(session=s, team_id=TEAM, ref="sentiment@1", label="production",
                          user="U1")
    with session_scope(engine) as s:
        assert catalog.resolve(session=s, team_id=TEAM, ref="sentiment").version == 1
        assert catalog.resolve(session=s, team_id=TEAM, ref="sentiment:production").version == 1
        assert catalog.resolve(session=s, team_id=TEAM, ref="sentiment@2").version == 2
        with pytest.raises(NotFound) as e:
            catalog.resolve(session=s, team_id=TEAM, ref="sentiment@9")
        assert str(e.value) == "sentiment has no version 9 (latest is 2)"
        with pytest.raises(NotFound) as e:
            catalog.resolve(session=s, team_id=TEAM, ref="sentiment:staging")
        assert str(e.value) == "sentiment has no label `staging` (labels: production)"
        with pytest.raises(NotFound) as e:
            catalog.resolve(session=s, team_id=TEAM, ref="nope")
        assert str(e.value) == "no prompt `nope` in this workspace; try /prompt list"
        with pytest.raises(UserError, match="not a valid reference"):
            catalog.resolve(session=s, team_id=TEAM, ref="Bad Name")


def test_list_searches_name_tags_description_and_text(engine: Engine) -> None:
    with session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="sentiment", content=content(),
                             author="U1", description="Product reviews", tags=["classify"])
        catalog.save_version(session=s, team_id=TEAM, name="triage",
                             content=content(system="Route the support ticket."), author="U1",
                             description="Support tickets", tags=["routing"])

    def names(q: str) -> list[str]:
        with session_scope(engine) as s:
            return [p.prompt.name for p in catalog.list_prompts(session=s, team_id=TEAM, query=q)]

    assert names("") == ["sentiment", "triage"]
    assert names("triage") == ["triage"]
    assert names("ROUTING") == ["triage"]
    assert names("reviews") == ["sentiment"]
    assert names("support ticket") == ["triage"]  # words from description and template text
    assert names("classify the sentiment") == ["sentiment"]
    assert names("nothing-like-this") == []


def test_diff_text_and_fields(engine: Engine) -> None:
    a, _ = save(engine)
    b, _ = save(engine, system="Classify the sentiment. Answer in one word.",
                params={"temperature": 0.7, "max_new_tokens": 4},
                docs={"task": "label reviews", "limitations": "sarcasm fools it"})
    d = catalog.diff(a, b, a_name="sentiment@1", b_name="sentiment@2")
    assert "--- sentiment@1" in d.text and "+++ sentiment@2" in d.text
    assert "-Classify the sentiment." in d.text
    assert "+Classify the sentiment. Answer in one word." in d.text
    changed = {f: (old, new) for f, old, new in d.changes}
    assert changed == {"params.temperature": ("0.0", "0.7"),
                       "docs.limitations": ("no sarcasm", "sarcasm fools it")}
    assert not d.same and catalog.diff(a, a).same


def test_delete_permissions_and_soft_delete(engine: Engine) -> None:
    save(engine, user="U_OWNER")
    with session_scope(engine) as s:
        catalog.set_label(session=s, team_id=TEAM, ref="sentiment@1", label="production",
                          user="U_OWNER")
    with pytest.raises(Forbidden, match="owner"), session_scope(engine) as s:
        catalog.delete(session=s, team_id=TEAM, name="sentiment",
                       actor=Actor(team_id=TEAM, user_id="U_OTHER"))
    with session_scope(engine) as s:
        catalog.delete(session=s, team_id=TEAM, name="sentiment",
                       actor=Actor(team_id=TEAM, user_id="U_OWNER"))
    with session_scope(engine) as s:
        assert catalog.list_prompts(session=s, team_id=TEAM) == []
        for ref in ("sentiment", "sentiment@1", "sentiment:production"):
            with pytest.raises(NotFound, match="no prompt `sentiment`"):
                catalog.resolve(session=s, team_id=TEAM, ref=ref)
        # History is kept.
        assert s.execute(select(PromptVersion)).scalars().all()
        assert s.execute(select(LabelHistory)).scalars().all()
    # The name can be used again: a new version on the kept history.
    v, created = save(engine, system="back again", user="U_NEW")
    assert created and v.version == 2
    with session_scope(engine) as s:
        assert catalog.get_prompt(session=s, team_id=TEAM, name="sentiment").owner == "U_NEW"
        catalog.delete(session=s, team_id=TEAM, name="sentiment",
                       actor=Actor(team_id=TEAM, user_id="U_ADMIN", is_admin=True))


def test_workspaces_are_isolated(engine: Engine) -> None:
    save(engine, team=TEAM)
    with session_scope(engine) as s:
        assert catalog.list_prompts(session=s, team_id=OTHER) == []
        with pytest.raises(NotFound):
            catalog.resolve(session=s, team_id=OTHER, ref="sentiment")
        with pytest.raises(NotFound):
            catalog.set_label(session=s, team_id=OTHER, ref="sentiment@1", label="production",
                              user="U9")
        with pytest.raises(NotFound):
            catalog.delete(session=s, team_id=OTHER, name="sentiment",
                           actor=Actor(team_id=OTHER, user_id="U9", is_admin=True))
        with pytest.raises(NotFound):
            catalog.history(session=s, team_id=OTHER, name="sentiment")
    # The same name in another workspace is a different prompt.
    vb, created = save(engine, team=OTHER, system="team B's own")
    assert created and vb.version == 1
    with session_scope(engine) as s:
        a = catalog.resolve(session=s, team_id=TEAM, ref="sentiment")
        b = catalog.resolve(session=s, team_id=OTHER, ref="sentiment")
        assert a.content_hash != b.content_hash and a.prompt_id != b.prompt_id


def test_new_and_edit_modes(engine: Engine) -> None:
    with session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="p", content=content(), author="U1",
                             mode="new")
    with pytest.raises(UserError, match="already exists"), session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="p", content=content(), author="U1",
                             mode="new")
    with pytest.raises(NotFound), session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="q", content=content(), author="U1",
                             mode="edit")
    with pytest.raises(UserError, match="not a valid prompt name"), session_scope(engine) as s:
        catalog.save_version(session=s, team_id=TEAM, name="../etc", content=content(),
                             author="U1")
