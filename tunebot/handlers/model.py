"""/model list · show · label: the registry of fine-tuned adapters; a protected label
(production) moves through the production gate (tunebot.catalog.promote)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebot import catalog, datasets, registry
from tunebot.catalog import promote
from tunebot.commands import Command, Ref, parse_ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import NotFound, UserError
from tunebot.handlers.common import Routes, pin, submit_job
from tunebot.handlers.labels import forced_move, queued_move, said
from tunebot.models import Dataset, Job, ModelVersion
from tunebot.promotion import decide_first
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
    labels = registry.model_labels(engine=app.engine, team_id=actor.team_id, name=name)
    pairs.insert(1, ("labels", ", ".join(f"{k} → @{v}" for k, v in labels.items()) or "—"))
    blocks = [fields(pairs)]
    moves = registry.label_history(engine=app.engine, team_id=actor.team_id, name=name)
    if moves:  # why each label moved: the gate's evidence, or an admin's forced reason
        blocks.append(table(["when", "label", "from", "to", "by", "why"], [
            [h.moved_at.strftime("%Y-%m-%d %H:%M"), h.label,
             f"@{h.from_version}" if h.from_version else "—",
             f"@{h.to_version}" if h.to_version else "—", h.moved_by,
             ("⚠ forced: " if h.forced else "")
             + " ".join((h.reason or "—").split())[:140]
             + (f" (job #{(h.evidence or {})['job']})" if (h.evidence or {}).get("job")
                else "")] for h in moves]))
    return Outcome(Reply(text=f"ft:{m.name}@{m.version}", blocks=blocks))


@ROUTES("model", "label")
def label(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Point a model label at a version; a protected one (TUNEBOT_PROTECTED_LABELS: production)
    moves on evidence (tunebot.catalog.promote) — or by an admin's `force reason="…"`."""
    ref: Ref = cmd.args["ref"]
    if ref.version is None:
        raise UserError("give the version: /model label NAME@V LABEL", cmd.spec.usage)
    name, lab = ref.name, cmd.args["label"]
    reason = str(cmd.params.get("reason") or "").strip()
    protected = lab in app.settings.protected_labels
    if ("force" in cmd.flags or reason) and not protected:
        raise UserError("force and reason= are for protected labels "
                        f"({', '.join(app.settings.protected_labels) or 'none set'})",
                        cmd.spec.usage)
    cand = registry.resolve_model(engine=app.engine, team_id=actor.team_id, name=name,
                                  version=ref.version)
    if not protected:  # staging and the like move on the word of whoever may label
        done = registry.set_model_label(engine=app.engine, team_id=actor.team_id, name=name,
                                        version=cand.version, label=lab, user=actor.user_id)
        if not done.moved:
            return said(f"ft:{name}:{lab} already points at @{cand.version}.")
        moved = f" (was @{done.from_version})" if done.from_version else ""
        return said(f"ft:{name}:{lab} → @{cand.version}{moved}")
    holder = registry.model_labels(engine=app.engine, team_id=actor.team_id,
                                   name=name).get(lab)
    if holder == cand.version:
        return said(f"ft:{name}:{lab} already points at v{cand.version}.")
    if "force" in cmd.flags:
        return forced_move(cmd, actor, app, name=name, label=lab, version=cand.version,
                           holder=holder, reason=reason, kind="model")
    pending: dict[str, Any] = {"kind": "model", "name": name, "label": lab,
                               "to": cand.version, "expect": holder, "actor": actor.user_id,
                               "rule": app.settings.promotion_rule}
    if holder is None:
        return _first(cmd, actor, app, cand, pending)
    return _compare(cmd, actor, app, cand, holder, pending)


def _first(cmd: Command, actor: Actor, app: Core, cand: ModelVersion,
           pending: dict[str, Any]) -> Outcome:
    """A first protected label: a measured result meeting TUNEBOT_MIN_PRODUCTION_ACCURACY."""
    name, lab, ft = cand.name, pending["label"], f"ft:{cand.name}@{cand.version}"
    minimum = app.settings.min_production_accuracy
    pending |= {"first": True, "min": minimum}
    if not cand.prompt_ref:  # trained without prompt=: judged on its own held-out split
        acc = ((cand.metrics or {}).get("held_out") or {}).get("tuned")
        if acc is None:
            raise UserError(f"{lab} needs a measured result, and {ft} was trained without "
                            "prompt= and has no held-out accuracy; fine-tune with prompt=REF "
                            "(its eval set then measures it), or an admin may use "
                            'force reason="…"', cmd.spec.usage)
        decision = decide_first(float(acc), minimum, what=f"{ft} (its own held-out split)")
        if not decision.allowed:
            return said(f"ft:{name}:{lab} stays unset — {decision.reason}")
        return said(promote.move(
            engine=app.engine, team_id=actor.team_id, name=name, label=lab,
            version=cand.version, user=actor.user_id, expect=None, reason=decision.reason,
            evidence={"job": cand.job_id, "first": True, "accuracy": float(acc),
                      "held_out": True}, kind="model"))
    prompt, ds = _eval_set(cmd, actor, app, cand, lab)
    params = {"candidates": [prompt], "dataset": ds.name, "dataset_version": ds.version,
              "rows": ds.row_count, "model": ft, "samples": 1, "temperature": None,
              "max_tokens": None, "template": cand.template, "template_source": "adapter",
              "promote": pending}
    test = promote.find_test(engine=app.engine, team_id=actor.team_id,
                             candidate_id=prompt["version_id"], dataset=ds.name,
                             dataset_version=ds.version, model=ft, template=cand.template)
    if test is not None:
        return said(promote.after_job(engine=app.engine, settings=app.settings,
                                      team_id=actor.team_id, params=params,
                                      result=test.result or {}, job_id=test.id))
    under = f"{prompt['name']}@{prompt['version']}"
    title = f"🏷 {ft} for {lab}: test on {ds.name} under {under} (template={cand.template})"
    return queued_move(submit_job(cmd, actor, app, kind="prompt_test", params=params,
                                  title=title),
                       f"ft:{name}:{lab} is unset; testing {ft} on {ds.name} first")


def _compare(cmd: Command, actor: Actor, app: Core, cand: ModelVersion, holder: int,
             pending: dict[str, Any]) -> Outcome:
    """The candidate adapter paired with the holder on the eval set of the candidate's prompt,
    on their base model, each rendered with the template it was trained with."""
    name, lab, ft = cand.name, pending["label"], f"ft:{cand.name}@{cand.version}"
    held = registry.resolve_model(engine=app.engine, team_id=actor.team_id, name=name,
                                  version=holder)
    held_ft = f"ft:{name}@{holder}"
    force = 'an admin may use force reason="…"'
    if not cand.prompt_ref:
        raise UserError(f"{ft} was trained without prompt=, so no eval set measures it against "
                        f"{held_ft} ({lab}); fine-tune with prompt=REF, or {force}",
                        cmd.spec.usage)
    if held.base_model != cand.base_model:
        raise UserError(f"{ft} is on {cand.base_model} and {held_ft} ({lab}) on "
                        f"{held.base_model}: the gate compares adapters on the same base model; "
                        f"{force}", cmd.spec.usage)
    prompt, ds = _eval_set(cmd, actor, app, cand, lab)
    entries = [{**prompt, "adapter": f"ft:{name}@{m.version}", "template": m.template,
                "model_version_id": m.id, "label": f"ft:{name}@{m.version}"}
               for m in (held, cand)]
    params = {"candidates": entries, "dataset": ds.name, "dataset_version": ds.version,
              "rows": ds.row_count, "model": cand.base_model, "samples": 1,
              "temperature": None, "max_tokens": None, "promote": pending}
    def find(finished: bool) -> Job | None:
        return promote.find_model_evidence(
            engine=app.engine, team_id=actor.team_id, holder=entries[0], candidate=entries[1],
            dataset=ds.name, dataset_version=ds.version, base_model=cand.base_model,
            finished=finished)

    found = find(True)
    if found is not None:
        return said(promote.after_job(engine=app.engine, settings=app.settings,
                                      team_id=actor.team_id, params=params,
                                      result=found.result or {}, job_id=found.id))
    running = find(False)
    if running is not None:
        return said(f"ft:{name}:{lab} stays on v{holder} for now: job #{running.id} is "
                    f"already comparing {ft} with it ({running.status}); the label moves when "
                    "it finishes, if the team's rule allows.")
    under = f"{prompt['name']}@{prompt['version']}"
    note = (f" ({held_ft} was trained for {held.prompt_ref or 'no prompt'}; both run under "
            f"{under})" if held.prompt_ref != cand.prompt_ref else "")
    title = f"🏷 {ft} vs {held_ft} ({lab}) on {ds.name} under {under}"
    return queued_move(submit_job(cmd, actor, app, kind="model_compare", params=params,
                                  title=title),
                       f"ft:{name}:{lab} stays on v{holder} for now: comparing {ft} with it "
                       f"on {ds.name} under {under}{note}")


def _eval_set(cmd: Command, actor: Actor, app: Core, mv: ModelVersion,
              lab: str) -> tuple[dict[str, Any], Dataset]:
    """The pinned prompt version an adapter was trained for, and that prompt's eval set."""
    pref = parse_ref(str(mv.prompt_ref), cmd.spec.usage)
    with session_scope(app.engine) as session:
        prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=pref.name)
        eval_set = (prompt.datasets or {}).get("eval")
    if not eval_set:
        raise UserError(f"{lab} moves on evidence from the eval set of {pref.name} (the prompt "
                        f"ft:{mv.name}@{mv.version} was trained for), and it links none: add "
                        "`datasets: {eval: NAME}` to its YAML (or an admin may use "
                        'force reason="…")', cmd.spec.usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=eval_set)
    if ds.row_count == 0:
        raise UserError(f"the eval set {ds.name} of {pref.name} has no rows", cmd.spec.usage)
    return pin(app, actor, pref), ds
