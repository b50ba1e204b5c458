"""/dataset list · show · add · check · delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunebot import datasets
from tunebot.commands import Command
from tunebot.core import Actor, Core, Outcome
from tunebot.errors import UserError
from tunebot.handlers.common import Routes, submit_job
from tunebot.handlers.finetune import plan
from tunebot.replies import Reply, code, context, fields, section, table

ROUTES = Routes()

SAMPLE_ROWS = 5
MAX_COLUMNS = 6


def _cell(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _balance(stats: dict[str, Any], limit: int = 4) -> str:
    balance = stats.get("label_balance") or {}
    if not balance:
        n = stats.get("distinct_expected", 0)
        return f"{n} distinct answers" if n else "—"
    items = list(balance.items())
    text = " · ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f" · +{len(items) - limit} more" if len(items) > limit else "")


@ROUTES("dataset", "list")
def list_(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Datasets of the workspace (latest version of each)."""
    rows = datasets.list_datasets(engine=app.engine, team_id=actor.team_id)
    if not rows:
        text = "No datasets yet. Add one with /dataset add NAME (with a file)."
        return Outcome(Reply(text=text, blocks=[section(text)]))
    body = [[d.name, f"v{d.version}", d.row_count, d.format, _balance(d.stats), d.created_by]
            for d in rows]
    head = f"{len(rows)} dataset{'s' if len(rows) != 1 else ''}"
    return Outcome(Reply(text=head, blocks=[
        section(head), table(["name", "version", "rows", "format", "labels", "by"], body)]))


@ROUTES("dataset", "show")
def show(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """A dataset: size, columns, label balance and a few sample rows."""
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=cmd.args["name"])
    rows = datasets.load_rows(ds)
    columns = list(ds.stats.get("columns") or (rows[0].keys() if rows else []))
    pairs = [("dataset", f"{ds.name} v{ds.version}"), ("rows", f"{ds.row_count:,}"),
             ("format", ds.format), ("columns", ", ".join(columns) or "—"),
             ("added by", ds.created_by), ("added", ds.created_at.strftime("%Y-%m-%d %H:%M")),
             ("hash", ds.content_hash[:12])]
    blocks = [section(f"*{ds.name}* v{ds.version}"), fields(pairs)]
    balance = ds.stats.get("label_balance") or {}
    if balance:
        total = sum(balance.values()) or 1
        blocks.append(table(["expected", "rows", "share"],
                            [[k, v, f"{100 * v / total:.0f}%"] for k, v in balance.items()]))
    shown = columns[:MAX_COLUMNS]
    if rows and shown:
        sample = [[_cell(r.get(c, "")) for c in shown] for r in rows[:SAMPLE_ROWS]]
        blocks.append(table(shown, sample))
    warnings = (ds.report or {}).get("warning_count", 0)
    if warnings:
        blocks.append(context(f"{warnings} warning{'s' if warnings != 1 else ''} when added: "
                              + "; ".join(ds.report.get("warnings", [])[:3])))
    return Outcome(Reply(text=f"{ds.name} v{ds.version}: {ds.row_count} rows", blocks=blocks))


@ROUTES("dataset", "add")
def add(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Validate an uploaded file and store it as the dataset's next version."""
    name = cmd.args["name"]
    if file is None:
        raise UserError("attach the data file (JSONL, CSV, YAML, Parquet or Arrow rows): in "
                        "Slack upload it with the command, or run `tunebot dataset add "
                        f"{name} FILE` (a file, or a `datasets` save_to_disk folder)",
                        cmd.spec.usage)
    ds, created = datasets.add_dataset(engine=app.engine, settings=app.settings,
                                       team_id=actor.team_id, name=name, path=file,
                                       user=actor.user_id,
                                       expected_column=cmd.params.get("expected"))
    column = (ds.stats or {}).get("expected_column")
    if created:
        text = f"Added {ds.name} v{ds.version}: {ds.row_count:,} rows." + (
            f" Expected answers read from column `{column}`." if column else "")
    else:
        text = f"No change: the file is identical to {ds.name} v{ds.version}."
    blocks = [section(text)]
    report = (ds.report or {}).get("text")
    if created and report:
        blocks.append(code(report))
    blocks.append(context(f"/dataset show {ds.name}"))
    return Outcome(Reply(text=text, blocks=blocks), extra={"version": ds.version,
                                                          "created": created})


@ROUTES("dataset", "check")
def check(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue a training-data check under a model's tokenizer."""
    model = cmd.params.get("model")
    if not model:
        raise UserError("model= is required (the tokenizer decides the lengths)",
                        cmd.spec.usage)
    params = plan(cmd, actor, app, model=model)
    title = f"🔎 data check · {params['dataset']} for {params['model']}"
    return submit_job(cmd, actor, app, kind="data_check", params=params, title=title)


@ROUTES("dataset", "delete")
def delete(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Soft-delete a dataset (its first uploader or an admin)."""
    name = cmd.args["name"]
    n = datasets.delete_dataset(engine=app.engine, team_id=actor.team_id, name=name,
                                actor=actor)
    text = f"Deleted dataset {name} ({n} version{'s' if n != 1 else ''}; files kept)."
    return Outcome(Reply(text=text, blocks=[section(text)]))
