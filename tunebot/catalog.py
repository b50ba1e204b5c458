"""The prompt catalog: immutable, documented versions, moving labels, references, search, diff.

Service functions take the caller's session (`fn(*, session, team_id, …)`) so a handler can
compose several in one transaction; every query is scoped by team_id. Versions are written
once and never changed: there is no update function, and an ORM hook refuses any attempt.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import event, func, select
from sqlmodel import Session

from tunebot.commands import LABEL_RE, Ref, parse_name, parse_ref
from tunebot.errors import NotFound, UserError
from tunebot.models import Label, LabelHistory, Prompt, PromptVersion, utcnow
from tunebot.service import Actor, require_owner_or_admin
from tunebot.templates import check_template, content_templates, render_messages

KIND = "prompt"
VAR_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")
RESERVED_VARS = frozenset({"expected", "assert"})  # dataset columns that hold the answer
TEXT_FIELDS = ("messages", "template")


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
    sample = {name: f"<{name}>" for name in declared}
    try:
        render_messages(content.canonical(), sample)
    except UserError as exc:
        # Only forbidden attributes: size and type errors depend on the real values.
        if "not allowed" in str(exc):
            problems.append(str(exc))
    return problems


@event.listens_for(PromptVersion, "before_update")
def _refuse_update(mapper: Any, connection: Any, target: PromptVersion) -> None:
    raise UserError(f"prompt versions are immutable (version {target.version}); "
                    "save a new version instead")


@event.listens_for(PromptVersion, "before_delete")
def _refuse_delete(mapper: Any, connection: Any, target: PromptVersion) -> None:
    raise UserError("prompt versions are never deleted; delete the prompt (soft) instead")


def _not_found(name: str) -> NotFound:
    return NotFound(f"no prompt `{name}` in this workspace; try /prompt list")


def get_prompt(*, session: Session, team_id: str, name: str,
               include_deleted: bool = False) -> Prompt:
    """A live prompt of the workspace by name, or NotFound."""
    row = session.execute(select(Prompt).where(
        Prompt.team_id == team_id, Prompt.name == name)).scalar_one_or_none()
    if row is None or (row.deleted_at is not None and not include_deleted):
        raise _not_found(name)
    return row


def versions_of(*, session: Session, prompt: Prompt) -> list[PromptVersion]:
    """All versions of a prompt, oldest first."""
    return list(session.execute(select(PromptVersion).where(
        PromptVersion.team_id == prompt.team_id, PromptVersion.prompt_id == prompt.id,
    ).order_by(PromptVersion.version)).scalars())


def latest_version(*, session: Session, prompt: Prompt) -> PromptVersion | None:
    """The newest version of a prompt, if it has any."""
    return session.execute(select(PromptVersion).where(
        PromptVersion.team_id == prompt.team_id, PromptVersion.prompt_id == prompt.id,
    ).order_by(PromptVersion.version.desc()).limit(1)).scalar_one_or_none()  # type: ignore[attr-defined]


def get_version(*, session: Session, prompt: Prompt, version: int) -> PromptVersion:
    """One version of a prompt, or NotFound naming the latest."""
    row = session.execute(select(PromptVersion).where(
        PromptVersion.team_id == prompt.team_id, PromptVersion.prompt_id == prompt.id,
        PromptVersion.version == version)).scalar_one_or_none()
    if row is None:
        latest = latest_version(session=session, prompt=prompt)
        raise NotFound(f"{prompt.name} has no version {version} "
                       f"(latest is {latest.version if latest else 'none'})")
    return row


def labels_of(*, session: Session, team_id: str, name: str) -> dict[str, int]:
    """A prompt's labels and the versions they point at."""
    rows = session.execute(select(Label).where(
        Label.team_id == team_id, Label.kind == KIND, Label.name == name,
    ).order_by(Label.label)).scalars()
    return {r.label: r.version for r in rows}


def resolve(*, session: Session, team_id: str, ref: Ref | str) -> PromptVersion:
    """NAME@3, NAME:label, or NAME (production if set, else latest) to a version."""
    if isinstance(ref, str):
        ref = parse_ref(ref, "/prompt show REF")
    prompt = get_prompt(session=session, team_id=team_id, name=ref.name)
    if ref.version is not None:
        return get_version(session=session, prompt=prompt, version=ref.version)
    labels = labels_of(session=session, team_id=team_id, name=ref.name)
    if ref.label is not None:
        if ref.label not in labels:
            have = ", ".join(labels) or "none yet"
            raise NotFound(f"{ref.name} has no label `{ref.label}` (labels: {have})")
        return get_version(session=session, prompt=prompt, version=labels[ref.label])
    if "production" in labels:
        return get_version(session=session, prompt=prompt, version=labels["production"])
    latest = latest_version(session=session, prompt=prompt)
    if latest is None:
        raise NotFound(f"{ref.name} has no versions yet")
    return latest


def check_meta(*, description: str | None = None, tags: list[str] | None = None,
               datasets: dict[str, str] | None = None) -> None:
    """Validate prompt-level metadata; raise UserError naming the bad field."""
    if description is not None and (not isinstance(description, str) or len(description) > 2000):
        raise UserError("description must be text of at most 2,000 characters")
    if tags is not None:
        if not isinstance(tags, list) or len(tags) > 20 or not all(
                isinstance(t, str) and 0 < len(t) <= 40 for t in tags):
            raise UserError("tags must be a list of at most 20 short words")
    if datasets is not None:
        if not isinstance(datasets, dict):
            raise UserError("datasets must map a role (eval, train) to a dataset name")
        for role, name in datasets.items():
            if not isinstance(role, str) or not VAR_RE.match(role):
                raise UserError(f"datasets: `{role}` is not a valid role (e.g. eval, train)")
            parse_name(str(name), "datasets: {eval: NAME, train: NAME}", "dataset name")


def set_metadata(*, session: Session, prompt: Prompt, description: str | None = None,
                 tags: list[str] | None = None, datasets: dict[str, str] | None = None,
                 owner: str | None = None) -> bool:
    """Change a prompt's description, tags, dataset links or owner; True when anything changed."""
    check_meta(description=description, tags=tags, datasets=datasets)
    changed = False
    for attr, value in (("description", description), ("tags", tags),
                        ("datasets", datasets), ("owner", owner)):
        if value is not None and getattr(prompt, attr) != value:
            setattr(prompt, attr, list(value) if attr == "tags" else
                    dict(value) if attr == "datasets" else value)
            changed = True
    if changed:
        prompt.updated_at = utcnow()
        session.add(prompt)
    return changed


def insert_version(*, session: Session, prompt: Prompt, version: int, content: PromptContent,
                   author: str, message: str = "") -> PromptVersion:
    """Write one new version with an explicit number (import keeps the file's numbering)."""
    problems = check_content(content)
    if problems:
        raise UserError(f"{prompt.name} v{version}: " + "\n".join(problems))
    row = PromptVersion(team_id=prompt.team_id, prompt_id=prompt.id, version=version,  # type: ignore[arg-type]
                        content=content.canonical(), content_hash=content_hash(content),
                        author=author, message=message or "")
    prompt.updated_at = utcnow()
    session.add(prompt)
    session.add(row)
    session.flush()
    return row


def ensure_prompt(*, session: Session, team_id: str, name: str, owner: str) -> tuple[Prompt, bool]:
    """The prompt row for a name, created (or brought back from soft deletion) when needed."""
    parse_name(name, "/prompt new  (name: in the YAML file)", "prompt name")
    row = session.execute(select(Prompt).where(
        Prompt.team_id == team_id, Prompt.name == name)).scalar_one_or_none()
    if row is None:
        row = Prompt(team_id=team_id, name=name, owner=owner)
        session.add(row)
        session.flush()
        return row, True
    if row.deleted_at is not None:
        row.deleted_at = None
        row.deleted_by = None
        row.owner = owner
        row.updated_at = utcnow()
        session.add(row)
        return row, True
    return row, False


def save_version(*, session: Session, team_id: str, name: str,
                 content: PromptContent | dict[str, Any], author: str, message: str = "",
                 mode: Literal["new", "edit", "upsert"] = "upsert",
                 description: str | None = None, tags: list[str] | None = None,
                 datasets: dict[str, str] | None = None) -> tuple[PromptVersion, bool]:
    """Save content as the next version; identical to the latest, nothing new (created=False)."""
    parsed = parse_content(content)
    check_meta(description=description, tags=tags, datasets=datasets)
    existing = session.execute(select(Prompt).where(
        Prompt.team_id == team_id, Prompt.name == name)).scalar_one_or_none()
    live = existing is not None and existing.deleted_at is None
    if mode == "new" and live:
        raise UserError(f"prompt `{name}` already exists; use /prompt edit {name} to add a version")
    if mode == "edit" and not live:
        raise _not_found(name)
    prompt, fresh = ensure_prompt(session=session, team_id=team_id, name=name, owner=author)
    set_metadata(session=session, prompt=prompt, description=description, tags=tags,
                 datasets=datasets)
    latest = latest_version(session=session, prompt=prompt)
    if latest is not None and not fresh and latest.content_hash == content_hash(parsed):
        return latest, False
    number = (latest.version if latest else 0) + 1
    row = insert_version(session=session, prompt=prompt, version=number, content=parsed,
                         author=author, message=message)
    return row, True


@dataclass
class LabelMove:
    """The result of a label command: where it points now and where it pointed before."""

    name: str
    label: str
    to_version: int
    from_version: int | None
    moved: bool


def set_label(*, session: Session, team_id: str, ref: Ref | str, label: str,
              user: str) -> LabelMove:
    """Point a label at a version, recording the move (who, when, from, to)."""
    if not LABEL_RE.match(label):
        raise UserError(f"`{label[:40]}` is not a valid label", "/prompt label REF LABEL")
    version = resolve(session=session, team_id=team_id, ref=ref)
    name = ref.name if isinstance(ref, Ref) else parse_ref(ref, "/prompt label REF LABEL").name
    row = session.execute(select(Label).where(
        Label.team_id == team_id, Label.kind == KIND, Label.name == name,
        Label.label == label)).scalar_one_or_none()
    before = row.version if row is not None else None
    if before == version.version:
        return LabelMove(name, label, version.version, before, False)
    if row is None:
        row = Label(team_id=team_id, kind=KIND, name=name, label=label,
                    version=version.version, updated_by=user)
    else:
        row.version = version.version
        row.updated_by = user
        row.updated_at = utcnow()
    session.add(row)
    session.add(LabelHistory(team_id=team_id, kind=KIND, name=name, label=label,
                             from_version=before, to_version=version.version, moved_by=user))
    session.flush()
    return LabelMove(name, label, version.version, before, True)


@dataclass
class PromptSummary:
    """A prompt with its newest version and labels, for lists."""

    prompt: Prompt
    latest: PromptVersion | None
    labels: dict[str, int] = field(default_factory=dict)


def list_prompts(*, session: Session, team_id: str, query: str = "") -> list[PromptSummary]:
    """Live prompts, filtered by words found in name, tags, description or template text."""
    prompts = session.execute(select(Prompt).where(
        Prompt.team_id == team_id, Prompt.deleted_at.is_(None),  # type: ignore[union-attr]
    ).order_by(Prompt.name)).scalars().all()
    latest_ids = dict(session.execute(
        select(PromptVersion.prompt_id, func.max(PromptVersion.version))
        .where(PromptVersion.team_id == team_id).group_by(PromptVersion.prompt_id)).all())
    words = query.lower().split()
    out = []
    for p in prompts:
        latest = (get_version(session=session, prompt=p, version=latest_ids[p.id])
                  if p.id in latest_ids else None)
        if words:
            hay = " ".join([p.name, p.description, " ".join(p.tags or []),
                            *(content_templates(latest.content) if latest else [])]).lower()
            if not all(w in hay for w in words):
                continue
        out.append(PromptSummary(p, latest, labels_of(session=session, team_id=team_id,
                                                      name=p.name)))
    return out


@dataclass
class History:
    """A prompt's versions and every label move, oldest first."""

    prompt: Prompt
    versions: list[PromptVersion]
    moves: list[LabelHistory]


def history(*, session: Session, team_id: str, name: str) -> History:
    """Versions and label moves of a live prompt."""
    prompt = get_prompt(session=session, team_id=team_id, name=name)
    moves = session.execute(select(LabelHistory).where(
        LabelHistory.team_id == team_id, LabelHistory.kind == KIND, LabelHistory.name == name,
    ).order_by(LabelHistory.moved_at, LabelHistory.id)).scalars().all()
    return History(prompt, versions_of(session=session, prompt=prompt), list(moves))


def delete(*, session: Session, team_id: str, name: str, actor: Actor) -> Prompt:
    """Soft-delete a prompt (owner or admin): hidden everywhere, versions and history kept."""
    prompt = get_prompt(session=session, team_id=team_id, name=name)
    require_owner_or_admin(prompt.owner, actor, f"prompt `{name}`")
    prompt.deleted_at = utcnow()
    prompt.deleted_by = actor.user_id
    session.add(prompt)
    session.flush()
    return prompt


@dataclass
class Diff:
    """Two versions compared: a unified diff of the text and a list of changed fields."""

    a: str
    b: str
    text: str
    changes: list[tuple[str, str, str]]

    @property
    def same(self) -> bool:
        """True when nothing differs."""
        return not self.text and not self.changes


def _text_lines(content: dict[str, Any]) -> list[str]:
    if content.get("messages"):
        lines: list[str] = []
        for m in content["messages"]:
            lines += [f"[{m['role']}]", *str(m.get("content", "")).splitlines(), ""]
        return lines
    return str(content.get("template") or "").splitlines()


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out[prefix] = text


def _short(text: str, n: int = 120) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


def diff(a: PromptVersion, b: PromptVersion, *, a_name: str = "", b_name: str = "") -> Diff:
    """Compare two versions: unified diff of messages/template, then field-by-field changes."""
    la = a_name or f"v{a.version}"
    lb = b_name or f"v{b.version}"
    text = "\n".join(difflib.unified_diff(_text_lines(a.content), _text_lines(b.content),
                                          fromfile=la, tofile=lb, lineterm=""))
    fa: dict[str, str] = {}
    fb: dict[str, str] = {}
    rest_a = {k: v for k, v in a.content.items() if k not in TEXT_FIELDS}
    rest_b = {k: v for k, v in b.content.items() if k not in TEXT_FIELDS}
    _flatten(rest_a, "", fa)
    _flatten(rest_b, "", fb)
    if ("messages" in a.content) != ("messages" in b.content):
        fa["kind"] = "chat" if "messages" in a.content else "template"
        fb["kind"] = "chat" if "messages" in b.content else "template"
    changes = [(k, _short(fa.get(k, "—")), _short(fb.get(k, "—")))
               for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    return Diff(la, lb, text, changes)
