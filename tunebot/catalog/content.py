"""A prompt version's content: the schema every version is validated against, and its hash.

Pure: no database. The store writes what this module accepts; the form, the YAML import and
`/prompt new` all validate through `parse_content` and `check_content`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunebot.catalog.templates import check_template, content_templates, render_messages
from tunebot.errors import UserError
from tunebot.jsonschemas import ref_problems

KIND = "prompt"
VAR_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")
RESERVED_VARS = frozenset({"expected", "assert"})  # dataset columns that hold the answer
TEXT_FIELDS = ("messages", "template")


def refuse_outside_refs(schema: Any, field: str) -> None:
    """Refuse a JSON Schema that names another document (a URL or file `$ref`, `$id`, an
    unknown `$schema`): workers validate offline, so only local `#/…` references work."""
    if isinstance(schema, str):  # a scorer may carry its schema as JSON text
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError):
            return  # not JSON: the scorer's own check says so
    problems = ref_problems(schema)
    if problems:
        raise ValueError(f"`{field}` {problems[0]}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Message(_Strict):
    """One chat message; its content is a template."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=50_000)


class Params(_Strict):
    """Generation parameters; unset ones fall back to the model runner's defaults."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    stop: list[str] = Field(default_factory=list, max_length=16)
    seed: int | None = Field(None, ge=0)


class Output(_Strict):
    """What the answer should look like: free text, one of fixed choices, or JSON."""

    format: Literal["text", "choice", "json"] = "text"
    choices: list[str] = Field(default_factory=list, max_length=100)
    json_schema: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _consistent(self) -> Output:
        if self.format == "choice":
            if len(set(self.choices)) < 2:
                raise ValueError("format `choice` needs at least two distinct `choices`")
        elif self.choices:
            raise ValueError("`choices` only go with format `choice`")
        if self.json_schema is not None:
            if self.format != "json":
                raise ValueError("`schema` only goes with format `json`")
            try:
                validator_for(self.json_schema).check_schema(self.json_schema)
            except SchemaError as exc:
                raise ValueError(f"`schema` is not a valid JSON Schema: {exc.message}") from None
            refuse_outside_refs(self.json_schema, "schema")
        return self


class Example(_Strict):
    """A documented example: the variables in, the answer out."""

    input: dict[str, Any] = Field(default_factory=dict)
    output: Any = None


class Docs(_Strict):
    """What a newcomer needs to use the prompt well."""

    context: str = ""
    task: str = ""
    limitations: str = ""
    examples: list[Example] = Field(default_factory=list, max_length=50)


class PromptContent(_Strict):
    """A version's content: the part that is hashed, deduplicated and never changed."""

    messages: list[Message] | None = None
    template: str | None = Field(None, max_length=50_000)
    variables: dict[str, str] = Field(default_factory=dict)
    model: str | None = Field(None, max_length=200)
    params: Params = Field(default_factory=Params)
    output: Output = Field(default_factory=Output)
    # Scorer names are checked by the workers that run them; tunebot must not import workers.
    scorers: list[str | dict[str, Any]] = Field(default_factory=list, max_length=20)
    tone: str = Field("", max_length=500)
    docs: Docs = Field(default_factory=Docs)

    @field_validator("scorers")
    @classmethod
    def _scorer_schemas(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for i, spec in enumerate(v):
            if isinstance(spec, dict) and spec.get("type") == "json-schema":
                refuse_outside_refs(spec.get("schema", spec.get("value")), f"scorers[{i}].schema")
        return v

    @field_validator("variables")
    @classmethod
    def _var_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not VAR_RE.match(name):
                raise ValueError(f"variable `{name[:40]}` is not a valid name (letters, digits, _;"
                                 " starting with a letter)")
            if name in RESERVED_VARS:
                raise ValueError(f"variable `{name}` is reserved for the reference answer")
        return v

    @model_validator(mode="after")
    def _one_text(self) -> PromptContent:
        if (self.messages is None) == (self.template is None):
            raise ValueError("give either `messages` (a chat) or `template` (plain text), not "
                             "both and not neither")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` is empty")
        return self

    def canonical(self) -> dict[str, Any]:
        """The stored form: defaults dropped, so equal meaning gives equal bytes."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


VERSION_META = ("author", "message")


def validation_text(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as short lines naming each field."""
    lines = []
    for err in exc.errors()[:8]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "content"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: {msg}")
    more = len(exc.errors()) - len(lines)
    return "\n".join(lines + ([f"… and {more} more"] if more > 0 else []))


def parse_content(data: Any, where: str = "") -> PromptContent:
    """Validate a version's content (a dict as in a `versions:` entry, author/message aside)."""
    if isinstance(data, PromptContent):
        return data
    if not isinstance(data, dict):
        raise UserError(f"{where or 'the version'} must be a mapping of fields")
    body = {k: v for k, v in data.items() if k not in VERSION_META}
    try:
        return PromptContent.model_validate(body)
    except ValidationError as exc:
        raise UserError(validation_text(exc, f"{where}." if where else "")) from None


def content_hash(content: PromptContent | dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a version's content."""
    data = content.canonical() if isinstance(content, PromptContent) else content
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_content(content: PromptContent) -> list[str]:
    """Template problems: syntax, undeclared variables, and anything the sandbox refuses."""
    declared = list(content.variables)
    problems: list[str] = []
    texts = content_templates(content.canonical())
    for i, src in enumerate(texts):
        where = f"messages[{i}]" if content.messages is not None else "template"
        problems += [f"{where}: {p}" for p in check_template(src, declared)]
    if problems:
        return problems
    # A trial render catches what only shows at run time (attribute names built from pieces).
    # It is bounded like every render (templates.py: in the render child, two seconds and
    # 64 MB at most), so a bomb cannot hold the form's save or the bot thread that runs it.
    sample = {name: f"<{name}>" for name in declared}
    try:
        render_messages(content.canonical(), sample)
    except UserError as exc:
        # Only forbidden attributes: size and type errors depend on the real values.
        if "not allowed" in str(exc):
            problems.append(str(exc))
    return problems

