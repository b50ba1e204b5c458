"""Datasets: validated eval/training files, versioned by content, copied under the artifact root.

Each call here is a unit of work on its own (`fn(*, engine, …)`): adding a dataset writes a
file and a row together, and the file is removed again if the row cannot be committed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from tunebot.access import require_owner_or_admin
from tunebot.commands import parse_name
from tunebot.core import Actor
from tunebot.datasets.report import format_report
from tunebot.datasets.rows import parse_rows
from tunebot.datasets.training import validate_training
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.models import Dataset, utcnow
from tunebot.settings import Settings

TEAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "yaml": "yaml"}
USAGE = "/dataset add NAME  (with a file)"


def dataset_dir(settings: Settings, team_id: str) -> Path:
    """Where a workspace's dataset files live; the team id is checked so it cannot walk out."""
    if not TEAM_RE.match(team_id):
        raise UserError(f"`{team_id[:40]}` is not a valid workspace id")
    root = (settings.artifacts / "datasets").resolve()
    path = (root / team_id).resolve()
    if root not in path.parents:
        raise UserError("bad dataset location")
    return path


def _live(session: Any, team_id: str, name: str) -> Dataset | None:
    row: Dataset | None = session.execute(select(Dataset).where(
        col(Dataset.team_id) == team_id, col(Dataset.name) == name,
        col(Dataset.deleted_at).is_(None),
    ).order_by(col(Dataset.version).desc()).limit(1)).scalar_one_or_none()
    return row


def add_dataset(*, engine: Engine, settings: Settings, team_id: str, name: str, path: Path,
                user: str) -> tuple[Dataset, bool]:
    """Validate a file and store it as the next version; identical to the latest, nothing new."""
    parse_name(name, USAGE, "dataset name")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path.name}", USAGE)
    size = path.stat().st_size
    if size > settings.max_upload_mb * 1024 * 1024:
        raise UserError(f"{path.name} is {size / 1e6:.1f} MB; the limit is "
                        f"{settings.max_upload_mb} MB (TUNEBOT_MAX_UPLOAD_MB)")
    result = parse_rows(path, max_rows=settings.max_rows)
    if (not result.ok or result.content_hash is None) and _looks_like_training(result):
        # Chat `messages`, prompt/completion or input/output files are training data: they
        # are checked as such here, and under the model's tokenizer by /dataset check.
        training = validate_training(path, max_rows=settings.max_rows)
        if not training.ok or training.content_hash is None:
            raise UserError(f"{name}: the file was refused.\n{format_report(training)}")
        return _store(engine, settings, team_id, name, path, user, fmt=training.fmt,
                      content_hash=training.content_hash, rows=len(training.examples),
                      stats={"kind": training.kind or "chat", "examples": len(training.examples),
                             "duplicates": training.duplicates},
                      report={"text": format_report(training), "source": path.name,
                              "warnings": [str(w) for w in training.warnings[:20]]})
    if not result.ok or result.content_hash is None:
        raise UserError(f"{name}: the file was refused.\n{format_report(result)}")
    return _store(engine, settings, team_id, name, path, user, fmt=result.fmt,
                  content_hash=result.content_hash, rows=len(result.rows),
                  stats={**result.stats, "kind": "rows"},
                  report={"text": format_report(result), "columns": result.columns,
                          "warning_count": result.warning_count,
                          "warnings": [str(w) for w in result.warnings], "source": path.name})


def _looks_like_training(result: Any) -> bool:
    codes = {e.field for e in result.errors}
    cols = set(result.columns)
    return bool({"messages", "prompt", "completion"} & (codes | cols)) or \
        {"input", "output"} <= cols


def _store(engine: Engine, settings: Settings, team_id: str, name: str, path: Path, user: str,
           *, fmt: str, content_hash: str, rows: int, stats: dict[str, Any],
           report: dict[str, Any]) -> tuple[Dataset, bool]:
    """Copy the file under the artifact root as the next version and record it."""
    target_dir = dataset_dir(settings, team_id)
    for _ in range(3):  # two people adding the same name at once: retry on the version clash
        with session_scope(engine) as session:
            latest = _live(session, team_id, name)
            if latest is not None and latest.content_hash == content_hash:
                return latest, False
            top = session.execute(select(func.max(col(Dataset.version))).where(
                col(Dataset.team_id) == team_id, col(Dataset.name) == name)).scalar_one()
            version = (top or 0) + 1
        target = target_dir / f"{name}-v{version}.{EXTENSIONS.get(fmt, 'jsonl')}"
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        row = Dataset(
            team_id=team_id, name=name, version=version, content_hash=content_hash,
            format=fmt, row_count=rows, stats=stats, report=report,
            artifact_path=str(target), created_by=user)
        try:
            with session_scope(engine) as session:
                session.add(row)
            return row, True
        except IntegrityError:
            target.unlink(missing_ok=True)
    raise UserError(f"{name} is being changed by someone else right now; try again")


def get_dataset(*, engine: Engine, team_id: str, name: str,
                version: int | None = None) -> Dataset:
    """A live dataset (its latest version, or the one asked for), or NotFound."""
    with session_scope(engine) as session:
        latest = _live(session, team_id, name)
        if latest is None:
            raise NotFound(f"no dataset `{name}` in this workspace; try /dataset list")
        if version is None or version == latest.version:
            return latest
        row = session.scalars(select(Dataset).where(
            col(Dataset.team_id) == team_id, col(Dataset.name) == name,
            col(Dataset.version) == version, col(Dataset.deleted_at).is_(None),
        )).one_or_none()
        if row is None:
            raise NotFound(f"{name} has no version {version} (latest is {latest.version})")
        return row


def list_datasets(*, engine: Engine, team_id: str) -> list[Dataset]:
    """The latest live version of every dataset of a workspace, by name."""
    with session_scope(engine) as session:
        rows = session.execute(select(Dataset).where(
            col(Dataset.team_id) == team_id, col(Dataset.deleted_at).is_(None),
        ).order_by(col(Dataset.name), col(Dataset.version))).scalars().all()
    latest: dict[str, Dataset] = {}
    for row in rows:
        latest[row.name] = row
    return list(latest.values())


def load_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """The rows of a stored dataset, checked against the hash recorded when it was added."""
    if (dataset.stats or {}).get("kind", "rows") != "rows":
        raise UserError(f"{dataset.name} is training data ({dataset.stats.get('kind')} format), "
                        "not eval rows (the prompt's variables + `expected`)")
    path = Path(dataset.artifact_path)
    if not path.is_file():
        raise UserError(f"the file of dataset {dataset.name} v{dataset.version} is missing "
                        f"({path.name}); add it again")
    result = parse_rows(path, fmt=dataset.format, max_rows=max(dataset.row_count, 1))
    if result.content_hash != dataset.content_hash or not result.ok:
        raise UserError(f"the file of dataset {dataset.name} v{dataset.version} changed on disk "
                        "since it was added; add it again")
    return list(result.rows)


def delete_dataset(*, engine: Engine, team_id: str, name: str, actor: Actor) -> int:
    """Soft-delete every version of a dataset (its first uploader or an admin); the count."""
    with session_scope(engine) as session:
        rows = session.execute(select(Dataset).where(
            col(Dataset.team_id) == team_id, col(Dataset.name) == name,
            col(Dataset.deleted_at).is_(None),
        ).order_by(col(Dataset.version))).scalars().all()
        if not rows:
            raise NotFound(f"no dataset `{name}` in this workspace; try /dataset list")
        require_owner_or_admin(rows[0].created_by, actor, f"dataset `{name}`")
        now = utcnow()
        for row in rows:
            row.deleted_at = now
            session.add(row)
        return len(rows)
