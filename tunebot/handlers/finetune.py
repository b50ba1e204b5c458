"""/finetune start · estimate · status · list · cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tunebot import datasets, hyperparams, jobs
from tunebot.commands import Command, parse_name, parse_ref
from tunebot.core import Actor, Core, Outcome
from tunebot.errors import UserError
from tunebot.handlers.common import (
    Routes,
    cancel_job,
    check_model,
    find_job,
    jobs_table,
    pin,
    submit_job,
)
from tunebot.metrics import latest_metrics
from tunebot.models import utcnow
from tunebot.replies import Reply, fields

ROUTES = Routes()

FT_KINDS = ("finetune", "finetune_estimate", "data_check")


def plan(cmd: Command, actor: Actor, app: Core, *, model: str) -> dict[str, Any]:
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
        parse_name(name, usage, "model name")
    prompt = pin(app, actor, parse_ref(prompt_raw, usage)) if prompt_raw else None
    if template == "full" and prompt is None:
        raise UserError("template=full renders the catalog prompt: give prompt=REF", usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              # the parser requires DATASET (or NAME) before a handler runs
                              name=cast(str, cmd.args.get("dataset") or cmd.args.get("name")))
    return {"model": check_model(app, actor, model, usage), "dataset": ds.name,
            "dataset_version": ds.version, "prompt": prompt, "template": template,
            "name": name, "hp": raw}


@ROUTES("finetune", "start")
def start(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue a fine-tune (data check, training, evaluation, registration) on the gpu queue."""
    params = plan(cmd, actor, app, model=cmd.args["m"])
    target = params["name"] or (params["prompt"]["name"] if params["prompt"]
                                else params["dataset"])
    title = f"🔧 fine-tune ft:{target} · {params['model']} on {params['dataset']}"
    return submit_job(cmd, actor, app, kind="finetune", params=params, title=title)


@ROUTES("finetune", "estimate")
def estimate(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue the data check and estimate (inference queue; nothing is trained)."""
    params = plan(cmd, actor, app, model=cmd.args["m"])
    title = f"📐 estimate · {params['model']} on {params['dataset']}"
    return submit_job(cmd, actor, app, kind="finetune_estimate", params=params, title=title)


@ROUTES("finetune", "status")
def status(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """State, step/total, latest losses and ETA of a fine-tune."""
    job = find_job(app, actor, cmd.args["job"])
    assert job.id is not None
    latest = latest_metrics(engine=app.engine, job_id=job.id)
    pairs = [("job", f"#{job.id} {job.kind}"), ("state", job.status),
             ("progress", f"{job.progress:.0%}")]
    for key in ("train_loss", "val_loss", "token_accuracy", "examples_per_s"):
        if key in latest:
            pairs.append((key, f"{latest[key][1]:.4g} (step {latest[key][0]})"))
    if job.status == "running" and job.started_at and 0 < job.progress < 1:
        started = job.started_at if job.started_at.tzinfo else job.started_at.replace(
            tzinfo=utcnow().tzinfo)
        elapsed = (utcnow() - started).total_seconds()
        pairs.append(("ETA", f"~{elapsed * (1 - job.progress) / job.progress / 60:.1f} min"))
    if job.error:
        pairs.append(("error", job.error[:300]))
    return Outcome(Reply(text=f"#{job.id} {job.status}", blocks=[fields(pairs)]))


@ROUTES("finetune", "list")
def list_(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Recent fine-tune, estimate and data-check jobs."""
    return Outcome(jobs_table(jobs.list_jobs(engine=app.engine, team_id=actor.team_id,
                                            kinds=FT_KINDS)))


@ROUTES("finetune", "cancel")
def cancel(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Cancel cooperatively: the trainer stops at its next step and keeps its checkpoint."""
    return cancel_job(app, actor, cmd.args["job"],
                      running="will stop at its next step (its checkpoint is kept).")
