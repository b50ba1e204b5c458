"""The prompt catalog in SQL: prompts, immutable versions, moving labels, search, history.

Store functions take the caller's session (`fn(*, session, team_id, …)`) so a handler can
compose several in one transaction; every query is scoped by team_id. Versions are written
once and never changed: there is no update function, and an ORM hook installed with the
tables (tunebot.models) refuses any attempt in every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, select
from sqlmodel import Session, col

from tunebot.access import require_owner_or_admin
from tunebot.catalog import guidelines
from tunebot.catalog.content import (
    KIND,
    VAR_RE,
    PromptContent,
    check_content,
    content_hash,
    parse_content,
)
from tunebot.catalog.templates import content_templates
from tunebot.commands import LABEL_RE, Ref, parse_name, parse_ref
from tunebot.core import Actor
from tunebot.errors import NotFound, UserError
from tunebot.models import Label, LabelHistory, Prompt, PromptVersion, utcnow


def _not_found(name: str) -> NotFound:
    return NotFound(f"no prompt `{name}` in this workspace; try /prompt list")


def get_prompt(*, session: Session, team_id: str, name: str,
               include_deleted: bool = False) -> Prompt:
    """A live prompt of the workspace by name, or NotFound."""
    row = session.scalars(select(Prompt).where(
        col(Prompt.team_id) == team_id, col(Prompt.name) == name)).one_or_none()
    if row is None or (row.deleted_at is not None and not include_deleted):
        raise _not_found(name)
    return row


def versions_of(*, session: Session, prompt: Prompt) -> list[PromptVersion]:
    """All versions of a prompt, oldest first."""
    return list(session.execute(select(PromptVersion).where(
        col(PromptVersion.team_id) == prompt.team_id, col(PromptVersion.prompt_id) == prompt.id,
    ).order_by(col(PromptVersion.version))).scalars())


def prompt_of(*, session: Session, version: PromptVersion) -> tuple[Prompt, list[PromptVersion]]:
    """The prompt a version belongs to (deleted or not) and all its versions, oldest first."""
    prompt = session.get(Prompt, version.prompt_id)
    assert prompt is not None  # versions are never deleted, nor are prompt rows
    return prompt, versions_of(session=session, prompt=prompt)


def latest_version(*, session: Session, prompt: Prompt) -> PromptVersion | None:
    """The newest version of a prompt, if it has any."""
    return session.execute(select(PromptVersion).where(
        col(PromptVersion.team_id) == prompt.team_id, col(PromptVersion.prompt_id) == prompt.id,
    ).order_by(col(PromptVersion.version).desc()).limit(1)).scalar_one_or_none()


def get_version(*, session: Session, prompt: Prompt, version: int) -> PromptVersion:
    """One version of a prompt, or NotFound naming the latest."""
    row = session.scalars(select(PromptVersion).where(
        col(PromptVersion.team_id) == prompt.team_id, col(PromptVersion.prompt_id) == prompt.id,
        col(PromptVersion.version) == version)).one_or_none()
    if row is None:
        latest = latest_version(session=session, prompt=prompt)
        raise NotFound(f"{prompt.name} has no version {version} "
                       f"(latest is {latest.version if latest else 'none'})")
    return row


def labels_of(*, session: Session, team_id: str, name: str) -> dict[str, int]:
    """A prompt's labels and the versions they point at."""
    rows = session.execute(select(Label).where(
        col(Label.team_id) == team_id, col(Label.kind) == KIND, col(Label.name) == name,
    ).order_by(col(Label.label))).scalars()
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
    fields: tuple[tuple[str, Any], ...] = (("description", description), ("tags", tags),
                                           ("datasets", datasets), ("owner", owner))
    for attr, value in fields:
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
    assert prompt.id is not None  # a stored prompt (get_prompt, ensure_prompt flushes)
    row = PromptVersion(team_id=prompt.team_id, prompt_id=prompt.id, version=version,
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
        col(Prompt.team_id) == team_id, col(Prompt.name) == name)).scalar_one_or_none()
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
        col(Prompt.team_id) == team_id, col(Prompt.name) == name)).scalar_one_or_none()
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
    findings = guidelines.check(parsed.canonical(),
                                guidelines.team_rules(session=session, team_id=team_id))
    if guidelines.errors(findings):
        raise UserError(guidelines.refusal(findings))
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


ANY_HOLDER = -1  # set_label's `expect` default: move whatever the label points at now


class LabelMoved(UserError):
    """A compare-and-set label move found another holder than the one it was compared with."""


def set_label(*, session: Session, team_id: str, ref: Ref | str, label: str,
              user: str, expect: int | None = ANY_HOLDER, reason: str = "",
              forced: bool = False, evidence: dict[str, Any] | None = None) -> LabelMove:
    """Point a label at a version, recording the move (who, when, from, to, and why).

    With `expect` (a version, or None for "unset") the move is a compare-and-set: it lands
    only while the label still points where it pointed when the evidence was measured."""
    if not LABEL_RE.match(label):
        raise UserError(f"`{label[:40]}` is not a valid label", "/prompt label REF LABEL")
    version = resolve(session=session, team_id=team_id, ref=ref)
    name = ref.name if isinstance(ref, Ref) else parse_ref(ref, "/prompt label REF LABEL").name
    return move_label(session=session, team_id=team_id, kind=KIND, name=name, label=label,
                      version=version.version, user=user, expect=expect, reason=reason,
                      forced=forced, evidence=evidence,
                      again=f"/prompt label {name}@{version.version} {label}")


def move_label(*, session: Session, team_id: str, kind: str, name: str, label: str,
               version: int, user: str, expect: int | None = ANY_HOLDER, reason: str = "",
               forced: bool = False, evidence: dict[str, Any] | None = None,
               again: str = "", shown: str = "") -> LabelMove:
    """Move a prompt's or a model's label (kind) to an existing version, recording why.

    The one writer of labels and label_history for both kinds; `expect` makes it a
    compare-and-set (LabelMoved names it as `shown`, e.g. ft:NAME, and ends with `again`,
    the command to ask again)."""
    row = session.execute(select(Label).where(
        col(Label.team_id) == team_id, col(Label.kind) == kind, col(Label.name) == name,
        col(Label.label) == label).with_for_update()).scalar_one_or_none()
    before = row.version if row is not None else None
    if expect != ANY_HOLDER and before != expect:
        now = f"v{before}" if before is not None else "unset"
        was = f"v{expect}" if expect is not None else "unset"
        raise LabelMoved(f"{shown or name}:{label} moved to {now} since it was compared "
                         f"(at {was}); ask again: {again}")
    if before == version:
        return LabelMove(name, label, version, before, False)
    if row is None:
        row = Label(team_id=team_id, kind=kind, name=name, label=label, version=version,
                    updated_by=user)
    else:
        row.version = version
        row.updated_by = user
        row.updated_at = utcnow()
    session.add(row)
    session.add(LabelHistory(team_id=team_id, kind=kind, name=name, label=label,
                             from_version=before, to_version=version, moved_by=user,
                             reason=reason[:2000], forced=forced, evidence=evidence))
    session.flush()
    return LabelMove(name, label, version, before, True)


@dataclass
class PromptSummary:
    """A prompt with its newest version and labels, for lists."""

    prompt: Prompt
    latest: PromptVersion | None
    labels: dict[str, int] = field(default_factory=dict)


def list_prompts(*, session: Session, team_id: str, query: str = "") -> list[PromptSummary]:
    """Live prompts, filtered by words found in name, tags, description or template text."""
    prompts = session.execute(select(Prompt).where(
        col(Prompt.team_id) == team_id, col(Prompt.deleted_at).is_(None),
    ).order_by(col(Prompt.name))).scalars().all()
    latest_ids: dict[int | None, int] = dict(session.execute(
        select(col(PromptVersion.prompt_id), func.max(col(PromptVersion.version)))
        .where(col(PromptVersion.team_id) == team_id)
        .group_by(col(PromptVersion.prompt_id))).tuples().all())
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
        col(LabelHistory.team_id) == team_id, col(LabelHistory.kind) == KIND,
        col(LabelHistory.name) == name,
    ).order_by(col(LabelHistory.moved_at), col(LabelHistory.id))).scalars().all()
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


