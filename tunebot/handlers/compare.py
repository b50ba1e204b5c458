"""/compare: a prompt on the base model vs a fine-tuned model (vs both), on the same cases;
/compare REF on DATASET fair: the whole fight, each side at its best (a chain of jobs)."""

from __future__ import annotations

import math
from pathlib import Path

from tunebot import catalog, datasets, registry
from tunebot.commands import Command, Ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.handlers.common import Routes, check_model, pin, submit_job
from tunebot.handlers.optimize import DEFAULT_BUDGET

ROUTES = Routes()


def parse_traffic(raw: str | None, usage: str) -> float | None:
    """traffic=5000/day (or a bare number of calls per day)."""
    if raw is None:
        return None
    num = raw.removesuffix("/day").replace(",", "").replace("_", "")
    try:
        value = float(num)
    except ValueError:
        raise UserError(f"traffic must look like 5000/day (got {raw[:40]})", usage) from None
    if not math.isfinite(value) or not 0 < value <= 1e10:
        raise UserError(f"traffic must be between 1 and 1e10 calls per day (got {raw[:40]})",
                        usage)
    return value


def _newest_model_for_prompt(app: Core, actor: Actor, name: str) -> str:
    models = [m for m in registry.list_models(engine=app.engine, team_id=actor.team_id)
              if (m.prompt_ref or "").split("@")[0].split(":")[0] == name]
    if not models:
        raise UserError(f"no fine-tuned model is registered for prompt {name} yet; "
                        f"start one with /finetune start smollm2 on DATASET prompt={name}")
    newest = max(models, key=lambda m: (m.created_at, m.version))
    return f"ft:{newest.name}@{newest.version}"


@ROUTES("compare", "vs")
@ROUTES("compare", "name")
def compare(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
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


@ROUTES("compare", "fair")
def compare_fair(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue the fair fight: REF, its best optimised version, the auto fine-tune and both.

    A parent job (workers/runners/fair.py) whose optimize and fine-tune stages run as child
    jobs, each reused when a finished one has the same key.
    """
    usage = cmd.spec.usage
    ref: Ref = cmd.args["ref"]
    prompt = pin(app, actor, ref)
    model = check_model(app, actor, cmd.params.get("model") or prompt["model"], usage)
    if model.startswith(("ft:", "openai:")):
        raise UserError(f"model must be a base model the fair fight can fine-tune, such as "
                        f"smollm2 (got {model[:60]})", usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id,
                              name=cmd.args["dataset"])
    with session_scope(app.engine) as session:
        train = (catalog.get_prompt(session=session, team_id=actor.team_id,
                                    name=ref.name).datasets or {}).get("train")
    if not train:
        raise UserError(f"prompt {ref.name} names no training set (datasets.train), which the "
                        "fine-tune and the optimizer's development split come from; add one "
                        "with /prompt edit", usage)
    if train == ds.name:
        raise UserError(f"{ds.name} is {ref.name}'s training set: compare on held-out cases "
                        "(its eval set)", usage)
    tr = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=train)
    params = {"prompt": prompt, "model": model, "dataset": ds.name,
              "dataset_version": ds.version, "train": tr.name, "train_version": tr.version,
              "budget": cmd.params.get("budget") or DEFAULT_BUDGET,
              "traffic": parse_traffic(cmd.params.get("traffic"), usage)}
    title = f"🥊 fair compare {prompt['name']}@{prompt['version']} on {ds.name} · {model}"
    return submit_job(cmd, actor, app, kind="compare_fair", params=params, title=title)
