"""The model registry: fine-tuned adapters as named, versioned, labelled model versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from tunebot.db import session_scope
from tunebot.errors import NotFound
from tunebot.models import Label, LabelHistory, ModelVersion, utcnow


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
                    user: str) -> int | None:
    """Point a model label at a version (recording the move); returns the previous version."""
    resolve_model(engine=engine, team_id=team_id, name=name, version=version)
    with session_scope(engine) as session:
        row = session.execute(select(Label).where(
            col(Label.team_id) == team_id, col(Label.kind) == "model", col(Label.name) == name,
            col(Label.label) == label)).scalar_one_or_none()
        previous = row.version if row else None
        if row is None:
            row = Label(team_id=team_id, kind="model", name=name, label=label, version=version,
                        updated_by=user)
        row.version, row.updated_by, row.updated_at = version, user, utcnow()
        session.add(row)
        session.add(LabelHistory(team_id=team_id, kind="model", name=name, label=label,
                                 from_version=previous, to_version=version, moved_by=user))
        return previous
