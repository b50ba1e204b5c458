"""The template sandbox: strict variables, refused escapes (never executed), bounded cost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tunebot.catalog.templates import (
    MAX_OUTPUT,
    check_template,
    render,
    render_messages,
    variables_used,
)
from tunebot.errors import UserError

VARS = {"name": "Bob", "items": ["a", "b"], "row": {"k": 1}}

# Each payload, if executed, would create the canary file (or reach code that could).
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ joiner.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ namespace.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ lipsum.__globals__['os'].system('touch CANARY') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ self.__init__.__globals__.__builtins__.open('CANARY', 'w').write('x') }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('touch CANARY') }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('touch CANARY') }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ (name|attr('__cl' ~ 'ass__')).__base__ }}",
    "{{ name|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ name['__cl' ~ 'ass__'] }}",
    "{{ '{0.__class__.__base__.__subclasses__}'.format(name) }}",
    "{{ name|attr('format') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch CANARY') }}"
    "{% endif %}{% endfor %}",
    "{{ items|map(attribute='__class__')|list }}",
    "{{ items|sort(attribute='__class__') }}",
    "{{ range.__globals__['os'] }}",
    "{{ name.split.__self__.__class__ }}",
    "{{ dict.mro() }}",
    "{% set x = name.__class__ %}{{ x }}",
    "{{ items.append('x') }}{{ row.update(k=2) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{{ row.get('k')|attr('__class__') }}",
]

BLOWUPS = [
    "{{ range(10**9)|list }}",
    "{% for x in range(99999999) %}{% endfor %}",
    "{{ 'a' * 10**9 }}",
    "{{ [0] * 10**9 }}",
    "{% for a in range(9000) %}{% for b in range(9000) %}{% endfor %}{% endfor %}",
    "{{ '%0999999999d' % 1 }}",
    "{{ 10 ** (10 ** 10) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% macro f(n) %}{{ f(n) ~ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ name.center(10**9) }}",
    "{{ ('x' * 99999).replace('x', 'xx') }}",
    "{% set a = 'x' * 90000 %}{{ a ~ a }}",
    "{% set a = 'x' * 90000 %}{{ a + a }}",
    "{{ ''.join(['x' * 90000, 'y' * 90000]) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ items|batch(10**9, 'x')|list }}",
    "{% for c in 'x' * 99999 %}{% for d in 'y' * 99999 %}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_escape_refused_and_never_executed(payload: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    canary = tmp_path / "CANARY"
    with pytest.raises(UserError) as exc:
        render(payload, VARS)
    msg = str(exc.value)
    assert "template refused" in msg or "not allowed" in msg or "No filter named" in msg, msg
    assert not canary.exists()


@pytest.mark.parametrize("payload", BLOWUPS)
def test_resource_blowups_refused_quickly(payload: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        render(payload, VARS)
    assert time.monotonic() - start < 5
    msg = str(exc.value)
    assert any(w in msg for w in ("refused", "over 100,000", "No filter named")), msg


def test_corpus_is_big_enough() -> None:
    assert len(ESCAPES) + len(BLOWUPS) >= 30


def test_ordinary_templates_render() -> None:
    assert render("Hello {{ name }}!", VARS) == "Hello Bob!"
    assert render("{% for i in items %}{{ loop.index }}.{{ i|upper }} {% endfor %}", VARS) \
        == "1.A 2.B "
    assert render("{{ ', '.join(items) }} {{ row.items()|list }}", VARS) == "a, b [('k', 1)]"
    assert render("{{ name ~ '!' }} {{ 'ab' * 2 }} {{ 2 ** 10 }}", VARS) == "Bob! abab 1024"
    assert render("{% macro q(x) %}«{{ x }}»{% endmacro %}{{ q(name) }}", VARS) == "«Bob»"
    assert render("{{ name|default('x') }}{{ range(3)|list }}", VARS) == "Bob[0, 1, 2]"


def test_missing_variable_is_named() -> None:
    with pytest.raises(UserError, match="missing variable `ticket`"):
        render("Ticket: {{ ticket }} from {{ name }}", {"name": "x"})
    with pytest.raises(UserError, match="`a`, `b`"):
        render("{{ a }}{{ b }}", {})


def test_check_template_reports_syntax_line_and_undeclared() -> None:
    problems = check_template("line one\n{{ a }}\n{% for x in %}", ["a"])
    assert problems and "line 3" in problems[0]
    problems = check_template("{{ a }} {{ b }} {% for x in c %}{{ x }}{% endfor %}", ["a"])
    assert problems == ["variables used but not declared: `b`, `c` (add them under "
                        "`variables:` with a description)"]
    assert check_template("{{ a }}", ["a", "unused"]) == []
    assert variables_used("{% set y = 1 %}{{ x }}{{ y }}") == {"x"}


def test_output_is_bounded() -> None:
    with pytest.raises(UserError, match="over 100,000 characters"):
        render("{% for i in range(2000) %}{{ 'x' * 100 }}{% endfor %}", {})
    with pytest.raises(UserError, match="over 100,000 characters"):
        render("{{ t }}", {"t": "x" * (MAX_OUTPUT + 1)})
    assert len(render("{{ t }}", {"t": "x" * MAX_OUTPUT})) == MAX_OUTPUT


def test_long_template_refused() -> None:
    with pytest.raises(UserError, match="characters long"):
        render("x" * 60_000, {})


def test_render_messages() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Classify: {{ text }}"}]}
    assert render_messages(chat, {"text": "great"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Classify: great"}]
    assert render_messages({"template": "Q: {{ q }}"}, {"q": "why"}) == [
        {"role": "user", "content": "Q: why"}]
    big = {"messages": [{"role": "system", "content": "{{ t }}"},
                        {"role": "user", "content": "{{ t }}"}]}
    with pytest.raises(UserError, match="over"):  # the bound covers all messages together
        render_messages(big, {"t": "x" * 60_000})


@pytest.mark.parametrize("payload", [p for p in ESCAPES if "__" in p and "~" not in p
                                     and "\\x5f" not in p and "attribute=" not in p
                                     and "attr(" not in p])
def test_static_escapes_refused_at_save(payload: str) -> None:
    problems = check_template(payload, ["name", "items", "row"])
    assert any("template refused" in p for p in problems), problems
