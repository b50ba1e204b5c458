"""The model registry: fine-tuned adapters as named, versioned, labelled model versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.catalog.store import ANY_HOLDER, LabelMove, move_label
from tunebot.commands import LABEL_RE
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.models import Label, LabelHistory, ModelVersion

KIND = "model"  # labels.kind and label_history.kind of model labels


def resolve_model(*, engine: Engine, team_id: str, name: str, version: int | None = None,
                  label: str | None = None) -> ModelVersion:
    """ft:NAME (newest, or the `production` label when set), ft:NAME@V or ft:NAME:LABEL."""
    with session_scope(engine) as session:
        rows = session.scalars(select(ModelVersion).where(
            col(ModelVersion.team_id) == team_id, col(ModelVersion.name) == name,
        ).order_by(col(ModelVersion.version))).all()
        if not rows:
            raise NotFound(f"no model `ft:{name}` in this workspace; try /model list")
        labels = {lab.label: lab.version for lab in session.scalars(select(Label).where(
            col(Label.team_id) == team_id, col(Label.kind) == "model",
            col(Label.name) == name))}
    by_version = {r.version: r for r in rows}
    if label is not None:
        if label not in labels:
            raise NotFound(f"ft:{name} has no label `{label}` "
                           f"(labels: {', '.join(labels) or 'none yet'})")
        version = labels[label]
    elif version is None:
        version = labels.get("production", rows[-1].version)
    if version not in by_version:
        raise NotFound(f"ft:{name} has no version {version} (latest is {rows[-1].version})")
    return by_version[version]


def ft_resolver(engine: Engine, team_id: str) -> Callable[[str, int | None, str | None],
                                                          tuple[str, Path]]:
    """A resolver for workers' model refs: ft:NAME… → (base model ref, adapter folder)."""
    def resolve(name: str, version: int | None, label: str | None) -> tuple[str, Path]:
        mv = resolve_model(engine=engine, team_id=team_id, name=name, version=version,
                           label=label)
        return mv.base_model, Path(mv.adapter_path)
    return resolve


def register(*, engine: Engine, team_id: str, name: str, created_by: str,
             **fields: Any) -> ModelVersion:
    """Register the next version of a model name."""
    with session_scope(engine) as session:
        latest = session.execute(select(func.max(col(ModelVersion.version))).where(
            col(ModelVersion.team_id) == team_id, col(ModelVersion.name) == name,
        )).scalar()
        mv = ModelVersion(team_id=team_id, name=name, version=(latest or 0) + 1,
                          created_by=created_by, **fields)
        session.add(mv)
        session.flush()
        return mv


def list_models(*, engine: Engine, team_id: str) -> list[ModelVersion]:
    """Every model version of a workspace, newest first."""
    with session_scope(engine) as session:
        return list(session.scalars(select(ModelVersion).where(
            col(ModelVersion.team_id) == team_id)
            .order_by(col(ModelVersion.name), col(ModelVersion.version).desc())).all())


def set_model_label(*, engine: Engine, team_id: str, name: str, version: int, label: str,
                    user: str, expect: int | None = ANY_HOLDER, reason: str = "",
                    forced: bool = False, evidence: dict[str, Any] | None = None) -> LabelMove:
    """Point a model label at a version, recording who, from where and why; with `expect`
    a compare-and-set (LabelMoved when the holder changed since it was compared)."""
    if not LABEL_RE.match(label):
        raise UserError(f"`{label[:40]}` is not a valid label", "/model label NAME@V LABEL")
    resolve_model(engine=engine, team_id=team_id, name=name, version=version)
    with session_scope(engine) as session:
        return move_label(session=session, team_id=team_id, kind=KIND, name=name, label=label,
                          version=version, user=user, expect=expect, reason=reason,
                          forced=forced, evidence=evidence, shown=f"ft:{name}",
                          again=f"/model label {name}@{version} {label}")


def model_labels(*, engine: Engine, team_id: str, name: str) -> dict[str, int]:
    """A model's labels and the versions they point at."""
    with session_scope(engine) as session:
        return {r.label: r.version for r in session.scalars(select(Label).where(
            col(Label.team_id) == team_id, col(Label.kind) == KIND, col(Label.name) == name,
        ).order_by(col(Label.label)))}


def label_history(*, engine: Engine, team_id: str, name: str,
                  limit: int = 20) -> list[LabelHistory]:
    """A model's newest label moves (newest first): who, when, from, to and why."""
    with session_scope(engine) as session:
        rows = list(session.scalars(select(LabelHistory).where(
            col(LabelHistory.team_id) == team_id, col(LabelHistory.kind) == KIND,
            col(LabelHistory.name) == name,
        ).order_by(col(LabelHistory.moved_at).desc(), col(LabelHistory.id).desc())
            .limit(limit)))
        session.expunge_all()
        return rows
