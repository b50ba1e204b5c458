"""The catalog on disk: `prompts/NAME.yaml` plus `prompts/datasets/NAME.jsonl|csv|yaml`.

Import is idempotent and positional: a file's `versions:` list is versions 1..n, so running it
twice changes nothing, and a file that rewrites an existing version is refused rather than
silently forking history. Each file is one transaction: a broken file fails alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tunebot import catalog
from tunebot.catalog import guidelines
from tunebot.commands import Ref, parse_name
from tunebot.datasets.store import EXTENSIONS, add_dataset, list_datasets
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.models import Prompt
from tunebot.settings import Settings

MAX_YAML_BYTES = 1_000_000
FILE_KEYS = ("name", "description", "owner", "tags", "datasets", "labels", "versions")
META_KEYS = ("name", "description", "tags", "datasets")
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv", ".yaml", ".yml")
GUIDELINES = "guidelines"  # prompts/guidelines.yaml: the team's rules, not a prompt


MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 64


def _check_expansion(data: Any, budget: list[int], depth: int = 0) -> None:
    # Aliases are shared in memory, but whoever walks the data later pays for every copy:
    # a few lines of nested aliases ("billion laughs") would expand to gigabytes.
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError(f"the YAML expands to more than {MAX_YAML_NODES:,} values "
                        "(too many aliases)")
    if depth > MAX_YAML_DEPTH:
        raise UserError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels")
    if isinstance(data, dict):
        for k, v in data.items():
            _check_expansion(k, budget, depth + 1)
            _check_expansion(v, budget, depth + 1)
    elif isinstance(data, list):
        for v in data:
            _check_expansion(v, budget, depth + 1)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file, or raise UserError naming the line of the problem."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise UserError(f"{path.name} is larger than {MAX_YAML_BYTES // 1000} KB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path.name} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise UserError(f"{path.name}: invalid YAML at {where}: "
                        f"{exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path.name}: invalid YAML: {exc}") from None
    _check_expansion(data, [MAX_YAML_NODES])
    return data


def read_version_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `/prompt new|edit` file: (name/description/tags/datasets, one version's fields)."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{Path(path).name} must be a mapping of fields (messages or template, "
                        "variables, params, output, docs, …)")
    if "versions" in data:
        raise UserError("this file holds a whole prompt with `versions:`; load it with "
                        "`tunebot catalog import DIR`, or give one version's fields here")
    meta = {k: data[k] for k in META_KEYS if k in data}
    version = {k: v for k, v in data.items() if k not in META_KEYS}
    return meta, version


@dataclass
class FileResult:
    """What import did with one file."""

    path: str
    kind: str  # prompt | dataset
    name: str
    status: str  # created | updated | unchanged | failed
    detail: str = ""


@dataclass
class ImportReport:
    """Per-file results of an import or export."""

    files: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many files ended with this status."""
        return sum(1 for f in self.files if f.status == status)

    @property
    def failed(self) -> int:
        """Files that failed."""
        return self.count("failed")

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return self.failed == 0

    def lines(self) -> list[str]:
        """One line per file, then a summary line."""
        marks = {"created": "+", "updated": "~", "unchanged": "=", "failed": "✗",
                 "written": "→"}
        out = []
        for f in self.files:
            detail = f.detail.replace("\n", "\n      ")
            out.append(f"{marks.get(f.status, ' ')} {f.path}: {f.status}"
                       + (f" — {detail}" if detail else ""))
        counts = [f"{self.count(s)} {s}" for s in ("created", "updated", "unchanged", "failed",
                                                   "written") if self.count(s)]
        out.append(", ".join(counts) or "nothing to do")
        return out


def import_dir(*, engine: Engine, settings: Settings, team_id: str, user: str,
               path: Path, force: bool = False) -> ImportReport:
    """Load DIR/*.yaml prompts and DIR/datasets/* files into a workspace; idempotent.

    A protected label (TUNEBOT_PROTECTED_LABELS, e.g. production) is set by an import only
    where the prompt has none yet; one the file would move elsewhere is reported and left —
    it moves on evidence (/prompt label), or with `force` (an admin's --force)."""
    path = Path(path)
    report = ImportReport()
    if not path.is_dir():
        report.files.append(FileResult(str(path), "catalog", "", "failed", "not a directory"))
        return report
    data_dir = path / "datasets"
    if data_dir.is_dir():
        for file in sorted(data_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in DATA_SUFFIXES:
                report.files.append(_import_dataset(engine, settings, team_id, user, file, path))
    rules_file = next((f for f in (path / f"{GUIDELINES}.yaml", path / f"{GUIDELINES}.yml")
                       if f.is_file()), None)
    if rules_file is not None:  # first: the versions below are checked against them
        report.files.append(_import_guidelines(engine, team_id, user, rules_file, path))
    known = {d.name for d in list_datasets(engine=engine, team_id=team_id)}
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix.lower() in (".yaml", ".yml") \
                and file.stem != GUIDELINES:
            report.files.append(_import_prompt(
                engine, team_id, user, file, path, known,
                () if force else tuple(settings.protected_labels)))
    return report


def _import_guidelines(engine: Engine, team_id: str, user: str, file: Path,
                       root: Path) -> FileResult:
    rel = _rel(file, root)
    try:
        data = load_yaml(file)
        with session_scope(engine) as session:
            changed = guidelines.set_team_rules(session=session, team_id=team_id,
                                                document=data, user=user)
    except UserError as exc:
        return FileResult(rel, "guidelines", GUIDELINES, "failed", str(exc))
    return FileResult(rel, "guidelines", GUIDELINES, "updated" if changed else "unchanged",
                      "the team's rules for saving prompt versions")


def _rel(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root.parent))
    except ValueError:
        return str(file)


def _import_dataset(engine: Engine, settings: Settings, team_id: str, user: str, file: Path,
                    root: Path) -> FileResult:
    name = file.stem
    try:
        parse_name(name, "prompts/datasets/NAME.jsonl", "dataset name")
        row, created = add_dataset(engine=engine, settings=settings, team_id=team_id, name=name,
                                   path=file, user=user)
    except UserError as exc:
        return FileResult(_rel(file, root), "dataset", name, "failed", str(exc))
    if not created:
        return FileResult(_rel(file, root), "dataset", name, "unchanged", f"v{row.version}")
    status = "created" if row.version == 1 else "updated"
    return FileResult(_rel(file, root), "dataset", name, status,
                      f"v{row.version}, {row.row_count} rows")


def _check_file(data: Any, file: Path) -> tuple[str, list[dict[str, Any]], dict[str, int]]:
    if not isinstance(data, dict):
        raise UserError("the file must be a mapping (name, description, versions, …)")
    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        raise UserError(f"unknown field `{unknown[0]}` (fields: {', '.join(FILE_KEYS)})")
    name = data.get("name") or file.stem
    if name != file.stem:
        raise UserError(f"name `{name}` does not match the file name {file.name}")
    parse_name(str(name), "prompts/NAME.yaml", "prompt name")
    versions = data.get("versions")
    if not isinstance(versions, list) or not versions:
        raise UserError("`versions` must be a non-empty list")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict):
        raise UserError("`labels` must map a label to a version number, e.g. {production: 2}")
    for label, number in labels.items():
        if not isinstance(number, int) or isinstance(number, bool) or not (
                1 <= number <= len(versions)):
            raise UserError(f"labels.{label}: must be a version number from 1 to {len(versions)}")
    for i, v in enumerate(versions):
        if not isinstance(v, dict):
            raise UserError(f"versions[{i}] must be a mapping of fields")
        for key in catalog.VERSION_META:
            if v.get(key) is not None and not isinstance(v[key], str):
                raise UserError(f"versions[{i}].{key} must be text")
    return str(name), versions, {str(k): int(v) for k, v in labels.items()}


def _import_prompt(engine: Engine, team_id: str, user: str, file: Path, root: Path,
                   known_datasets: set[str], protected: tuple[str, ...]) -> FileResult:
    rel = _rel(file, root)
    try:
        data = load_yaml(file)
        name, versions, labels = _check_file(data, file)
        contents = [catalog.parse_content(v, f"versions[{i}]") for i, v in enumerate(versions)]
        with session_scope(engine) as session:
            status, detail = _apply(session, team_id, user, name, data, versions, contents,
                                    labels, protected)
    except UserError as exc:
        return FileResult(rel, "prompt", file.stem, "failed", str(exc))
    except IntegrityError:
        return FileResult(rel, "prompt", file.stem, "failed",
                          "changed by someone else during the import; run it again")
    missing = [d for d in (data.get("datasets") or {}).values() if d not in known_datasets]
    if missing:
        detail = (detail + "; " if detail else "") + "linked dataset not in the catalog: " + \
            ", ".join(missing)
    return FileResult(rel, "prompt", name, status, detail)


def _apply(session: Any, team_id: str, user: str, name: str, data: dict[str, Any],
           versions: list[dict[str, Any]], contents: list[catalog.PromptContent],
           labels: dict[str, int], protected: tuple[str, ...] = ()) -> tuple[str, str]:
    owner = str(data.get("owner") or user)
    try:
        existing: Prompt | None = catalog.get_prompt(session=session, team_id=team_id, name=name,
                                                     include_deleted=True)
    except NotFound:
        existing = None
    was_new = existing is None
    restored = existing is not None and existing.deleted_at is not None
    prompt, _ = catalog.ensure_prompt(session=session, team_id=team_id, name=name, owner=owner)
    changed = catalog.set_metadata(
        session=session, prompt=prompt, description=data.get("description"),
        tags=data.get("tags"), datasets=data.get("datasets"), owner=owner)
    have = {v.version: v for v in catalog.versions_of(session=session, prompt=prompt)}
    notes: list[str] = ["restored (it had been deleted)"] if restored else []
    added = []
    for number, (raw, content) in enumerate(zip(versions, contents, strict=True), start=1):
        h = catalog.content_hash(content)
        if number in have:
            if have[number].content_hash != h:
                raise UserError(f"versions[{number - 1}] differs from {name} v{number} in the "
                                "catalog; versions never change, so add a new entry at the end "
                                "instead (or export the catalog first)")
            continue
        catalog.insert_version(session=session, prompt=prompt, version=number, content=content,
                               author=raw.get("author") or owner, message=raw.get("message") or "")
        added.append(number)
    if added:
        notes.append(f"new version{'s' if len(added) > 1 else ''} "
                     + ", ".join(f"v{n}" for n in added))
    moved = False
    held = catalog.labels_of(session=session, team_id=team_id, name=name)
    for label, number in labels.items():
        if label in protected and held.get(label) not in (None, number):
            notes.append(f"{label} stays on v{held[label]} (the file says v{number}: a protected "
                         "label moves through /prompt label, or an admin's import --force)")
            continue
        move = catalog.set_label(session=session, team_id=team_id, ref=Ref(name, version=number),
                                 label=label, user=user)
        if move.moved:
            moved = True
            was = f"v{move.from_version}" if move.from_version else "unset"
            notes.append(f"{label} {was} → v{number}")
    if was_new:
        plural = "s" if len(versions) > 1 else ""
        tags = ", ".join(f"{k}→v{v}" for k, v in labels.items())
        return "created", f"{len(versions)} version{plural}" + (f", labels {tags}" if tags else "")
    if changed:
        notes.append("description, tags, owner or dataset links changed")
    extra = max(have, default=0) - len(versions)
    if extra > 0:
        notes.append(f"the catalog has {extra} newer version{'s' if extra > 1 else ''} than the "
                     "file (export to update it)")
    updated = restored or changed or bool(added) or moved
    return ("updated" if updated else "unchanged"), "; ".join(notes)


def _literal_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no type stubs here
    """Readable YAML: multi-line strings as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        """Write shared values out in full: a catalog file should read top to bottom."""
        return True


_Dumper.add_representer(str, _literal_str)


def dump_yaml(data: Any) -> str:
    """YAML text in the catalog's style (key order kept, block strings, unicode as is)."""
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return text


def prompt_document(*, session: Any, prompt: Prompt) -> dict[str, Any]:
    """A prompt with all its versions and labels, in the catalog file format."""
    labels = catalog.labels_of(session=session, team_id=prompt.team_id, name=prompt.name)
    doc: dict[str, Any] = {"name": prompt.name, "description": prompt.description,
                           "owner": prompt.owner, "tags": list(prompt.tags or [])}
    if prompt.datasets:
        doc["datasets"] = dict(prompt.datasets)
    if labels:
        doc["labels"] = labels
    doc["versions"] = [{"author": v.author, "message": v.message, **v.content}
                       for v in catalog.versions_of(session=session, prompt=prompt)]
    return doc


def export_dir(*, engine: Engine, settings: Settings, team_id: str, path: Path) -> ImportReport:
    """Write a workspace's live prompts and datasets as a catalog directory import can read."""
    path = Path(path)
    report = ImportReport()
    (path / "datasets").mkdir(parents=True, exist_ok=True)
    for ds in list_datasets(engine=engine, team_id=team_id):
        target = path / "datasets" / f"{ds.name}.{EXTENSIONS.get(ds.format, ds.format)}"
        try:
            shutil.copyfile(ds.artifact_path, target)
        except OSError as exc:
            report.files.append(FileResult(_rel(target, path), "dataset", ds.name, "failed",
                                           f"cannot copy v{ds.version}: {exc.strerror}"))
            continue
        report.files.append(FileResult(_rel(target, path), "dataset", ds.name, "written",
                                       f"v{ds.version}, {ds.row_count} rows"))
    with session_scope(engine) as session:
        stored = guidelines.stored_rules(session=session, team_id=team_id)
        if stored is not None:  # the team's own rules travel with its catalog
            rules = guidelines.guidelines_document(stored)
            target = path / f"{GUIDELINES}.yaml"
            target.write_text(dump_yaml(rules), encoding="utf-8")
            report.files.append(FileResult(_rel(target, path), "guidelines", GUIDELINES,
                                           "written", f"{len(rules['rules'])} rules"))
        for summary in catalog.list_prompts(session=session, team_id=team_id):
            doc = prompt_document(session=session, prompt=summary.prompt)
            target = path / f"{summary.prompt.name}.yaml"
            target.write_text(dump_yaml(doc), encoding="utf-8")
            report.files.append(FileResult(_rel(target, path), "prompt", summary.prompt.name,
                                           "written", f"{len(doc['versions'])} versions"))
    return report
