"""Fine-tunes (start, estimate, status, list, cancel), /dataset check and /model commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from tunebot import datasets, hyperparams, jobs, registry
from tunebot.commands import Command, Ref, parse_ref
from tunebot.errors import NotFound, UserError
from tunebot.handlers_jobs import check_model, pin
from tunebot.models import Metric
from tunebot.replies import Reply, fields, section, table
from tunebot.service import (
    Actor,
    App,
    Outcome,
    find_job,
    handler,
    jobs_table,
    list_jobs,
    require_owner_or_admin,
    submit_job,
)

FT_KINDS = ("finetune", "finetune_estimate", "data_check")


def _plan(cmd: Command, actor: Actor, app: App, *, model: str) -> dict[str, Any]:
    """Validate everything the request can check without a tokenizer; pin what it refers to."""
    usage = cmd.spec.usage
    raw = {k: str(v) for k, v in cmd.params.items()}
    prompt_raw = raw.pop("prompt", None)
    template = raw.pop("template", "minimal")
    name = raw.pop("name", None)
    raw.pop("model", None)  # /dataset check's model= is the model, not a hyperparameter
    if template not in ("minimal", "full"):
        raise UserError(f"template must be minimal or full (got {template})", usage)
    hyperparams.validate(raw)  # unknown keys and out-of-range values answer at once
    if name is not None:
        from tunebot.commands import parse_name

        parse_name(name, usage, "model name")
    prompt = pin(app, actor, parse_ref(prompt_raw, usage)) if prompt_raw else None
    if template == "full" and prompt is None:
        raise UserError("template=full renders the catalog prompt: give prompt=REF", usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              name=cmd.args.get("dataset") or cmd.args.get("name"))
    return {"model": check_model(app, actor, model, usage), "dataset": ds.name,
            "dataset_version": ds.version, "prompt": prompt, "template": template,
            "name": name, "hp": raw}


@handler("finetune", "start")
def start(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue a fine-tune (data check, training, evaluation, registration) on the gpu queue."""
    params = _plan(cmd, actor, app, model=cmd.args["m"])
    target = params["name"] or (params["prompt"]["name"] if params["prompt"]
                                else params["dataset"])
    title = f"🔧 fine-tune ft:{target} · {params['model']} on {params['dataset']}"
    return submit_job(cmd, actor, app, kind="finetune", params=params, title=title)


@handler("finetune", "estimate")
def estimate(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue the data check and estimate (inference queue; nothing is trained)."""
    params = _plan(cmd, actor, app, model=cmd.args["m"])
    title = f"📐 estimate · {params['model']} on {params['dataset']}"
    return submit_job(cmd, actor, app, kind="finetune_estimate", params=params, title=title)


@handler("dataset", "check")
def check(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue a training-data check under a model's tokenizer."""
    model = cmd.params.get("model")
    if not model:
        raise UserError("model= is required (the tokenizer decides the lengths)",
                        cmd.spec.usage)
    params = _plan(cmd, actor, app, model=model)
    title = f"🔎 data check · {params['dataset']} for {params['model']}"
    return submit_job(cmd, actor, app, kind="data_check", params=params, title=title)


@handler("finetune", "status")
def status(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """State, step/total, latest losses and ETA of a fine-tune."""
    job = find_job(app, actor, cmd.args["job"])
    with Session(app.engine) as s:
        rows = s.execute(select(Metric).where(Metric.job_id == job.id)  # type: ignore[arg-type]
                         .order_by(Metric.step)).scalars().all()  # type: ignore[arg-type]
    latest: dict[str, tuple[int, float]] = {}
    for m in rows:
        latest[m.name] = (m.step, m.value)
    pairs = [("job", f"#{job.id} {job.kind}"), ("state", job.status),
             ("progress", f"{job.progress:.0%}")]
    for key in ("train_loss", "val_loss", "token_accuracy", "examples_per_s"):
        if key in latest:
            pairs.append((key, f"{latest[key][1]:.4g} (step {latest[key][0]})"))
    if job.status == "running" and job.started_at and 0 < job.progress < 1:
        from tunebot.models import utcnow

        started = job.started_at if job.started_at.tzinfo else job.started_at.replace(
            tzinfo=utcnow().tzinfo)
        elapsed = (utcnow() - started).total_seconds()
        pairs.append(("ETA", f"~{elapsed * (1 - job.progress) / job.progress / 60:.1f} min"))
    if job.error:
        pairs.append(("error", job.error[:300]))
    return Outcome(Reply(text=f"#{job.id} {job.status}", blocks=[fields(pairs)]))


@handler("finetune", "list")
def list_(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Recent fine-tune, estimate and data-check jobs."""
    return Outcome(jobs_table(list_jobs(app, actor, kinds=FT_KINDS)))


@handler("finetune", "cancel")
def cancel(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Cancel cooperatively: the trainer stops at its next step and keeps its checkpoint."""
    job = find_job(app, actor, cmd.args["job"])
    require_owner_or_admin(job.requested_by, actor, f"job #{job.id}")
    state = jobs.request_cancel(app.engine, job.id, app.waker)  # type: ignore[arg-type]
    text = {"cancelled": f"Job #{job.id} cancelled.",
            "running": f"Job #{job.id} will stop at its next step (its checkpoint is kept)."
            }.get(state, f"Job #{job.id} already ended ({state}).")
    return Outcome(Reply(text=text, blocks=[section(text)]))


@handler("model", "list")
def models(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Registered models of the workspace."""
    rows = registry.list_models(engine=app.engine, team_id=actor.team_id)
    if not rows:
        return Outcome(Reply(text="No models registered yet.",
                             blocks=[section("No models registered yet — /finetune start …")]))
    body = [[f"ft:{m.name}@{m.version}", m.base_model, m.prompt_ref or "—", m.template,
             f"{(m.metrics or {}).get('best_val_loss') or float('nan'):.3f}",
             m.created_at.strftime("%Y-%m-%d")] for m in rows]
    return Outcome(Reply(text=f"{len(rows)} model versions", blocks=[table(
        ["model", "base", "prompt", "template", "val loss", "created"], body)]))


@handler("model", "show")
def show(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """One model's versions with their data, hyperparameters and metrics."""
    name = cmd.args["name"].removeprefix("ft:")
    rows = [m for m in registry.list_models(engine=app.engine, team_id=actor.team_id)
            if m.name == name]
    if not rows:
        raise NotFound(f"no model `ft:{name}` in this workspace; try /model list")
    m = rows[0]
    held = (m.metrics or {}).get("held_out") or {}
    pairs = [("model", f"ft:{m.name}@{m.version} ({len(rows)} version(s))"),
             ("base", m.base_model), ("prompt", m.prompt_ref or "—"), ("template", m.template),
             ("dataset hash", m.dataset_hash[:12]), ("best step", str(m.best_step)),
             ("held-out accuracy", f"{held['tuned']:.1%}" if held else "—"),
             ("code", m.code_version), ("job", f"#{m.job_id}"),
             ("hyperparameters", ", ".join(f"{k}={v}" for k, v in m.hyperparams.items())[:500])]
    return Outcome(Reply(text=f"ft:{m.name}@{m.version}", blocks=[fields(pairs)]))


@handler("model", "label")
def label(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Point a model label (e.g. production) at a version."""
    ref: Ref = cmd.args["ref"]
    if ref.version is None:
        raise UserError("give the version: /model label NAME@V LABEL", cmd.spec.usage)
    prev = registry.set_model_label(engine=app.engine, team_id=actor.team_id, name=ref.name,
                                    version=ref.version, label=cmd.args["label"],
                                    user=actor.user_id)
    moved = f" (was @{prev})" if prev else ""
    text = f"ft:{ref.name}:{cmd.args['label']} → @{ref.version}{moved}"
    return Outcome(Reply(text=text, blocks=[section(text)]))
