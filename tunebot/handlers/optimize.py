"""/prompt optimize: automatic prompt refinement as a job (workers/optimize/ does the search).

`submit_optimize` is the contract other code builds on (the fair `/compare` chains an optimize
job as a child stage and reuses a finished one): keep its parameters and the job's params keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebot import catalog, datasets
from tunebot.commands import Command, Ref, parse_ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import UserError
from tunebot.handlers.common import Routes, check_model, pin, submit_job

ROUTES = Routes()

USAGE = ("/prompt optimize REF on DATASET [train=DATASET] [model=M] [budget=N] "
         "[proposer=openai:NAME]")
DEFAULT_BUDGET = 16  # candidates raced on the dev split; sized for ~5 min on SmolLM2, 2 CPUs
MIN_BUDGET, MAX_BUDGET = 4, 200


def submit_optimize(app: Core, actor: Actor, *, ref: Ref | str, dataset: str,
                    train: str | None = None, model: str | None = None,
                    budget: int | None = None, proposer: str | None = None,
                    parent_id: int | None = None, cmd: Command | None = None) -> Outcome:
    """Queue a `prompt_optimize` job: the one entry point (the contract) for other handlers.

    - `ref`: the starting version (pinned now: a label moving later does not change the job);
    - `dataset`: the eval set whose held-out cases measure start and winner once, at the end;
    - `train`: where the dev split and the demonstrations come from; None means the prompt's
      `datasets.train`, and when there is none (or it is DATASET itself) the eval set is split
      (dev part for the search, held-out part untouched until the end);
    - `model`: the model to optimise for (default: the version's model);
    - `budget`: candidates tried (MIN_BUDGET–MAX_BUDGET, default DEFAULT_BUDGET);
    - `proposer`: `openai:NAME` proposing instruction rewrites; None keeps the search seeded;
    - `parent_id`: the job that chains this one (recorded in params).

    The job's params carry `prompt` (same shape as prompt_test's candidates: ref, name,
    version, version_id, model), `dataset`, `dataset_version`, `rows`, `train`,
    `train_version` (None when split from the eval set), `split` ("train" or "eval"),
    `model`, `budget`, `proposer`, `parent_id`. A succeeded job's result carries `saved`
    ({name, version, version_id, ref}), `start_accuracy`, `winner_accuracy`, `paired`,
    `code_version` and `leaderboard`.
    """
    usage = cmd.spec.usage if cmd is not None else USAGE
    if isinstance(ref, str):
        ref = parse_ref(ref, usage)
    start = pin(app, actor, ref)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=dataset)
    if ds.row_count == 0:
        raise UserError(f"dataset {ds.name} has no rows", usage)
    if train is None:
        with session_scope(app.engine) as session:
            prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=ref.name)
            train = (prompt.datasets or {}).get("train")
    train_version: int | None = None
    if train is not None and train != ds.name:
        tr = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=train)
        if tr.row_count == 0:
            raise UserError(f"training set {tr.name} has no rows", usage)
        train_version = tr.version
    else:
        train = None
    budget = DEFAULT_BUDGET if budget is None else int(budget)
    if not MIN_BUDGET <= budget <= MAX_BUDGET:
        raise UserError(f"budget must be between {MIN_BUDGET} and {MAX_BUDGET} (got {budget})",
                        usage)
    model = check_model(app, actor, model or start["model"], usage)
    if proposer is not None:
        if not proposer.startswith("openai:"):
            raise UserError(f"proposer must be openai:NAME (got {proposer[:40]})", usage)
        check_model(app, actor, proposer, usage)
    params: dict[str, Any] = {
        "prompt": start, "dataset": ds.name, "dataset_version": ds.version,
        "rows": ds.row_count, "train": train, "train_version": train_version,
        "split": "train" if train is not None else "eval", "model": model,
        "budget": budget, "proposer": proposer, "parent_id": parent_id, "seed": 0,
    }
    source = f"dev from {train}" if train else f"dev split of {ds.name}"
    title = (f"🔧 optimize {start['name']}@{start['version']} on {ds.name} "
             f"({ds.row_count} cases, {source}) · {model}")
    return submit_job(cmd, actor, app, kind="prompt_optimize", params=params, title=title,
                      parent_id=parent_id)


@ROUTES("prompt", "optimize")
def prompt_optimize(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Queue an automatic refinement of a prompt version (see submit_optimize)."""
    p = cmd.params
    return submit_optimize(app, actor, ref=cmd.args["ref"], dataset=cmd.args["dataset"],
                           train=p.get("train"), model=p.get("model"), budget=p.get("budget"),
                           proposer=p.get("proposer"), cmd=cmd)
