"""/prompt test and /prompt compare: resolve what to run (pinned versions), then queue a job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunebot import catalog, datasets, registry
from tunebot.commands import Command, Ref, parse_ref
from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.service import Actor, App, Outcome, handler, submit_job

MODEL_RE = re.compile(
    r"^(?:smollm2|ft:[a-z0-9][a-z0-9_.-]{0,62}(?:@\d{1,6}|:[a-z0-9][a-z0-9_-]{0,62})?"
    r"|openai:[A-Za-z0-9][\w.:/-]{0,120}|[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}"
    r"|/[\w./-]{1,400}|\./[\w./-]{1,400})$"
)
MODEL_USAGE = ("model= takes smollm2, a Hugging Face id (org/name), a local path, "
               "ft:NAME[@V|:LABEL] or openai:NAME")


def check_model(app: App, actor: Actor, model: str, usage: str) -> str:
    """Validate a model ref's shape, and that an ft: model exists in this workspace."""
    if not MODEL_RE.match(model) or ".." in model:
        raise UserError(f"`{model[:80]}` is not a model reference ({MODEL_USAGE})", usage)
    if model.startswith("ft:"):
        ref = parse_ref(model[3:], usage)
        registry.resolve_model(engine=app.engine, team_id=actor.team_id, name=ref.name,
                               version=ref.version, label=ref.label)
    return model


def pin(app: App, actor: Actor, ref: Ref) -> dict[str, Any]:
    """Resolve a prompt ref now, so a label moving later does not change the job."""
    with session_scope(app.engine) as session:
        version = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
        return {"ref": str(ref), "name": ref.name, "version": version.version,
                "version_id": version.id, "model": version.content.get("model") or "smollm2"}


def _test_params(cmd: Command, app: App, actor: Actor, refs: list[Ref]) -> dict[str, Any]:
    usage = cmd.spec.usage
    candidates = [pin(app, actor, ref) for ref in refs]
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              name=cmd.args["dataset"])
    if ds.row_count == 0:
        raise UserError(f"dataset {ds.name} has no rows", usage)
    model = check_model(app, actor, cmd.params.get("model") or candidates[0]["model"], usage)
    return {"candidates": candidates, "dataset": ds.name, "dataset_version": ds.version,
            "rows": ds.row_count, "model": model, "samples": cmd.params.get("samples", 1),
            "temperature": cmd.params.get("temperature"),
            "max_tokens": cmd.params.get("max_tokens")}


@handler("prompt", "test")
def prompt_test(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue a prompt test of one version over an eval set."""
    params = _test_params(cmd, app, actor, [cmd.args["ref"]])
    c = params["candidates"][0]
    title = (f"🧪 {c['name']}@{c['version']} on {params['dataset']} "
             f"({params['rows']} cases) · {params['model']}")
    return submit_job(cmd, actor, app, kind="prompt_test", params=params, title=title)


@handler("prompt", "compare")
def prompt_compare(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue a paired comparison of two versions on the same cases and model."""
    params = _test_params(cmd, app, actor, [cmd.args["ref"], cmd.args["ref2"]])
    a, b = params["candidates"]
    if a["version_id"] == b["version_id"]:
        raise UserError(f"both references resolve to {a['name']}@{a['version']}: "
                        "compare two different versions", cmd.spec.usage)
    title = (f"⚖️ {a['name']}@{a['version']} vs {b['name']}@{b['version']} on "
             f"{params['dataset']} · {params['model']}")
    return submit_job(cmd, actor, app, kind="prompt_compare", params=params, title=title)


def parse_traffic(raw: str | None, usage: str) -> float | None:
    """traffic=5000/day (or a bare number of calls per day)."""
    if raw is None:
        return None
    num = raw.removesuffix("/day").replace(",", "").replace("_", "")
    try:
        value = float(num)
    except ValueError:
        raise UserError(f"traffic must look like 5000/day (got {raw[:40]})", usage) from None
    if not 0 < value <= 1e10:
        raise UserError(f"traffic must be between 1 and 1e10 calls per day (got {raw[:40]})",
                        usage)
    return value


def _newest_model_for_prompt(app: App, actor: Actor, name: str) -> str:
    models = [m for m in registry.list_models(engine=app.engine, team_id=actor.team_id)
              if (m.prompt_ref or "").split("@")[0].split(":")[0] == name]
    if not models:
        raise UserError(f"no fine-tuned model is registered for prompt {name} yet; "
                        f"start one with /finetune start smollm2 on DATASET prompt={name}")
    newest = max(models, key=lambda m: (m.created_at, m.version))
    return f"ft:{newest.name}@{newest.version}"


@handler("compare", "vs")
@handler("compare", "name")
def compare(cmd: Command, actor: Actor, app: App, file: Path | None) -> Outcome:
    """Queue prompt vs fine-tuned (vs both) on the same held-out cases."""
    usage = cmd.spec.usage
    if cmd.action == "name":
        ref = Ref(cmd.args["name"])
        model = _newest_model_for_prompt(app, actor, ref.name)
    else:
        ref, model = cmd.args["ref"], cmd.args["m"]
    prompt = pin(app, actor, ref)
    model = check_model(app, actor, model, usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              name=cmd.args["dataset"])
    params = {"prompt": prompt, "model": model, "dataset": ds.name,
              "dataset_version": ds.version, "hybrid": "hybrid" in cmd.flags,
              "traffic": parse_traffic(cmd.params.get("traffic"), usage)}
    title = f"📊 {prompt['name']}@{prompt['version']} vs {model} on {ds.name}"
    return submit_job(cmd, actor, app, kind="compare", params=params, title=title)
