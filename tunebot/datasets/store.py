"""Datasets: validated eval/training files, versioned by content, copied under the artifact root.

Each call here is a unit of work on its own (`fn(*, engine, …)`). Adding a dataset copies the
file to a temporary name of its own, commits the row, and only then moves the copy to the
version's path: the (team, name, version) key admits one committed row per path, so an add
that loses a race never touches the winner's file, and no file a row points to is deleted.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from tunebot.access import require_owner_or_admin
from tunebot.commands import parse_name
from tunebot.core import Actor
from tunebot.datasets.columnar import pack_folder
from tunebot.datasets.report import format_report
from tunebot.datasets.rows import parse_rows
from tunebot.datasets.training import validate_training
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.models import Dataset, utcnow
from tunebot.settings import Settings

log = logging.getLogger(__name__)
TEAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "yaml": "yaml",
              "parquet": "parquet", "arrow": "arrow"}
USAGE = "/dataset add NAME  (with a file)"
# Adds of one name racing for the next version: each round one of them commits, so this many
# rounds lets that many people add different files at the same moment.
STORE_ATTEMPTS = 12
# A reader may find a row an instant before its file is moved into place (see _store).
FILE_GRACE_SECONDS = 2.0


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
                user: str, expected_column: str | None = None) -> tuple[Dataset, bool]:
    """Validate a file and store it as the next version; identical to the latest, nothing new.

    `expected_column` names the column that holds the expected answer (without it, `label`,
    `answer`, `output`, `target` or `expected_output` is used when there is no `expected`).
    A Hugging Face `datasets` save_to_disk folder is stored as one Arrow file."""
    parse_name(name, USAGE, "dataset name")
    path = Path(path)
    if path.is_dir():
        return _add_folder(engine, settings, team_id, name, path, user, expected_column)
    if not path.is_file():
        raise UserError(f"no such file: {path.name}", USAGE)
    size = path.stat().st_size
    if size > settings.max_upload_mb * 1024 * 1024:
        raise UserError(f"{path.name} is {size / 1e6:.1f} MB; the limit is "
                        f"{settings.max_upload_mb} MB (TUNEBOT_MAX_UPLOAD_MB)")
    return _add_file(engine, settings, team_id, name, path, user, expected_column, path.name)


def _add_folder(engine: Engine, settings: Settings, team_id: str, name: str, folder: Path,
                user: str, expected_column: str | None) -> tuple[Dataset, bool]:
    root = settings.var_dir / "uploads"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root))
    except OSError as exc:
        raise UserError(f"could not read {folder.name}: the upload folder could not be written "
                        f"({exc.strerror or exc.__class__.__name__}) — tell your tunebot admin "
                        "(TUNEBOT_VAR_DIR)") from exc
    try:
        packed = pack_folder(folder, tmp / f"{folder.name or 'dataset'}.arrow",
                             max_bytes=settings.max_upload_mb * 2**20,
                             max_decoded_bytes=settings.max_decoded_mb * 2**20)
        return _add_file(engine, settings, team_id, name, packed, user, expected_column,
                         f"{folder.name}/ (save_to_disk)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _add_file(engine: Engine, settings: Settings, team_id: str, name: str, path: Path,
              user: str, expected_column: str | None, source: str) -> tuple[Dataset, bool]:
    decoded = settings.max_decoded_mb * 2**20
    result = parse_rows(path, max_rows=settings.max_rows, expected_column=expected_column,
                        max_decoded_bytes=decoded)
    if (not result.ok or result.content_hash is None) and _looks_like_training(result):
        # Chat `messages`, prompt/completion or input/output files are training data: they
        # are checked as such here, and under the model's tokenizer by /dataset check.
        training = validate_training(path, max_rows=settings.max_rows,
                                     max_decoded_bytes=decoded)
        if not training.ok or training.content_hash is None:
            raise UserError(f"{name}: the file was refused.\n{format_report(training)}")
        return _store(engine, settings, team_id, name, path, user, fmt=training.fmt,
                      content_hash=training.content_hash, rows=len(training.examples),
                      stats={"kind": training.kind or "chat", "examples": len(training.examples),
                             "duplicates": training.duplicates},
                      report={"text": format_report(training), "source": source,
                              "warnings": [str(w) for w in training.warnings[:20]]})
    if not result.ok or result.content_hash is None:
        raise UserError(f"{name}: the file was refused.\n{format_report(result)}")
    return _store(engine, settings, team_id, name, path, user, fmt=result.fmt,
                  content_hash=result.content_hash, rows=len(result.rows),
                  stats={**result.stats, "kind": "rows", "expected_column":
                         result.expected_from},
                  report={"text": ((f"expected answers read from column `{result.expected_from}`"
                                    "\n") if result.expected_from else "")
                          + format_report(result), "columns": result.columns,
                          "warning_count": result.warning_count,
                          "warnings": [str(w) for w in result.warnings], "source": source})


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
    staged = _stage(target_dir, name, path)
    try:
        for attempt in range(STORE_ATTEMPTS):
            with session_scope(engine) as session:
                # The top version first: under READ COMMITTED each statement sees its own
                # snapshot, so a version committed in between is then seen by the latest-row
                # check (same content: nothing new) rather than skipped over as v+1.
                top = session.execute(select(func.max(col(Dataset.version))).where(
                    col(Dataset.team_id) == team_id, col(Dataset.name) == name)).scalar_one()
                latest = _live(session, team_id, name)
                if latest is not None and latest.content_hash == content_hash:
                    return latest, False
                version = (top or 0) + 1
            # Versions are never reused (deleted rows keep theirs), so this path belongs to
            # whichever add commits the row for `version`, and to no other row ever.
            target = target_dir / f"{name}-v{version}.{EXTENSIONS.get(fmt, 'jsonl')}"
            row = Dataset(
                team_id=team_id, name=name, version=version, content_hash=content_hash,
                format=fmt, row_count=rows, stats=stats, report=report,
                artifact_path=str(target), created_by=user)
            try:
                with session_scope(engine) as session:
                    session.add(row)
            except IntegrityError:
                # Someone else committed this version: their file is theirs to move in; look
                # again (the same content is then simply the latest version).
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
                continue
            _move_in(engine, row, staged, target)
            return row, True
    finally:
        staged.unlink(missing_ok=True)
    raise UserError(f"{name} is being changed by someone else right now; try again")


def _stage(target_dir: Path, name: str, path: Path) -> Path:
    """A copy of the upload under a name no other add uses, in the version's folder so that
    the final move is an atomic rename; a folder it cannot write is a clear refusal."""
    staged: Path | None = None
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, staged_name = tempfile.mkstemp(dir=target_dir, prefix=f".{name}-", suffix=".part")
        staged = Path(staged_name)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before a row can point at them
        return staged
    except OSError as exc:
        if staged is not None:
            staged.unlink(missing_ok=True)
        log.error("cannot store dataset %s under %s: %s", name, target_dir, exc)
        raise UserError(f"could not store {name}: the dataset folder could not be written "
                        f"({exc.strerror or exc.__class__.__name__}); nothing was added — "
                        "tell your tunebot admin (TUNEBOT_ARTIFACTS_DIR)") from exc


def _move_in(engine: Engine, row: Dataset, staged: Path, target: Path) -> None:
    """Put the committed row's file in place; if that fails, the row goes too (it would
    point at nothing), and the caller hears why."""
    try:
        os.replace(staged, target)
    except OSError as exc:
        with session_scope(engine) as session:
            session.execute(delete(Dataset).where(col(Dataset.id) == row.id))
        log.error("cannot move dataset %s v%s into %s: %s", row.name, row.version, target, exc)
        raise UserError(f"could not store {row.name} v{row.version} "
                        f"({exc.strerror or exc.__class__.__name__}); nothing was added — "
                        "try again or tell your tunebot admin (TUNEBOT_ARTIFACTS_DIR)") from exc


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
    deadline = time.monotonic() + FILE_GRACE_SECONDS
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # the add that committed this row moves its file in right after
    if not path.is_file():
        raise UserError(f"the file of dataset {dataset.name} v{dataset.version} is missing "
                        f"({path.name}); add it again")
    result = parse_rows(path, fmt=dataset.format, max_rows=max(dataset.row_count, 1),
                        expected_column=(dataset.stats or {}).get("expected_column"))
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
