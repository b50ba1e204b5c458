"""/model list · show · label: the registry of fine-tuned adapters."""

from __future__ import annotations

from pathlib import Path

from tunebot import registry
from tunebot.commands import Command, Ref
from tunebot.core import Actor, Core, Outcome
from tunebot.errors import NotFound, UserError
from tunebot.handlers.common import Routes
from tunebot.replies import Reply, fields, section, table

ROUTES = Routes()


@ROUTES("model", "list")
def models(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
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


@ROUTES("model", "show")
def show(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
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


@ROUTES("model", "label")
def label(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
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
