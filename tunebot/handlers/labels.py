"""/prompt label: labels point at versions; a protected one (production) moves through the
production gate (tunebot.catalog.promote) or an admin's forced move with a reason."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError

from tunebot import catalog, datasets
from tunebot.access import require_owner_or_admin
from tunebot.catalog import promote
from tunebot.commands import Command, Ref
from tunebot.core import Actor, Core, Outcome
from tunebot.db import session_scope
from tunebot.errors import Forbidden, UserError
from tunebot.handlers.common import Routes, pin, submit_job
from tunebot.replies import Reply, section

ROUTES = Routes()


@ROUTES("prompt", "label")
def label(cmd: Command, actor: Actor, app: Core, file: Path | None) -> Outcome:
    """Point a label at a version, recording who moved it, from where and why.

    A protected label (TUNEBOT_PROTECTED_LABELS: production) is what everyone else runs: only
    the prompt's owner or an admin asks, and it moves on evidence (tunebot.catalog.promote) —
    or by an admin's `force reason="…"`.
    """
    ref: Ref = cmd.args["ref"]
    name, lab = ref.name, cmd.args["label"]
    reason = str(cmd.params.get("reason") or "").strip()
    if "force" in cmd.flags or reason:
        if lab not in app.settings.protected_labels:
            raise UserError("force and reason= are for protected labels "
                            f"({', '.join(app.settings.protected_labels)})", cmd.spec.usage)
    if lab not in app.settings.protected_labels:
        if lab == "production":  # what everyone else runs: its owner or an admin, gate or not
            with session_scope(app.engine) as session:
                prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=name)
                require_owner_or_admin(prompt.owner, actor, f"prompt {prompt.name}")
        return _plain_label(app, actor, ref, lab)
    with session_scope(app.engine) as session:
        prompt = catalog.get_prompt(session=session, team_id=actor.team_id, name=name)
        require_owner_or_admin(prompt.owner, actor, f"prompt {prompt.name}")
        cand = catalog.resolve(session=session, team_id=actor.team_id, ref=ref)
        holder = catalog.labels_of(session=session, team_id=actor.team_id, name=name).get(lab)
        eval_set = (prompt.datasets or {}).get("eval")
    if holder == cand.version:
        return said(f"{name}:{lab} already points at v{cand.version}.")
    if "force" in cmd.flags:
        return forced_move(cmd, actor, app, name=name, label=lab, version=cand.version,
                           holder=holder, reason=reason, kind="prompt")
    if not eval_set:
        raise UserError(f"{lab} moves on evidence from the prompt's eval set, and {name} links "
                        "none: add `datasets: {eval: NAME}` to its YAML (or an admin may use "
                        'force reason="…")', cmd.spec.usage)
    ds = datasets.get_dataset(engine=app.engine, team_id=actor.team_id, name=eval_set)
    pinned = [pin(app, actor, Ref(name, version=v)) for v in (holder, cand.version) if v]
    model = pinned[0]["model"]
    pending = {"name": name, "label": lab, "to": cand.version, "expect": holder,
               "actor": actor.user_id, "rule": app.settings.promotion_rule}
    params = {"candidates": pinned, "dataset": ds.name, "dataset_version": ds.version,
              "rows": ds.row_count, "model": model, "samples": 1, "temperature": None,
              "max_tokens": None, "promote": pending}
    if holder is None:  # the first: a measured prompt test meeting the team's minimum
        pending |= {"first": True, "min": app.settings.min_production_accuracy}
        test = promote.find_test(engine=app.engine, team_id=actor.team_id,
                                 candidate_id=cand.id or 0, dataset=ds.name,
                                 dataset_version=ds.version, model=model)
        if test is not None:
            return said(promote.after_job(engine=app.engine, settings=app.settings,
                                          team_id=actor.team_id, params=params,
                                          result=test.result or {}, job_id=test.id))
        title = f"🏷 {name}@{cand.version} for {lab}: prompt test on {ds.name} · {model}"
        return queued_move(submit_job(cmd, actor, app, kind="prompt_test", params=params,
                                      title=title), f"{name}:{lab} is unset; testing "
                           f"{name}@{cand.version} on {ds.name} first")
    found = promote.find_evidence(engine=app.engine, team_id=actor.team_id,
                                  holder_id=pinned[0]["version_id"], candidate_id=cand.id or 0,
                                  dataset=ds.name, dataset_version=ds.version, model=model)
    if found is not None:
        return said(promote.after_job(engine=app.engine, settings=app.settings,
                                      team_id=actor.team_id, params=params,
                                      result=found.result or {}, job_id=found.id))
    title = (f"🏷 {name}@{cand.version} vs {name}@{holder} ({lab}) on {ds.name} · {model}")
    return queued_move(submit_job(cmd, actor, app, kind="prompt_compare", params=params,
                                  title=title),
                       f"{name}:{lab} stays on v{holder} for now: comparing "
                       f"{name}@{cand.version} with it on {ds.name} ({model})")


def forced_move(cmd: Command, actor: Actor, app: Core, *, name: str, label: str,
                version: int, holder: int | None, reason: str | None,
                kind: str) -> Outcome:
    """An admin's `force reason="…"` past the gate (/prompt label, /model label): the reason
    and the actor go into the label history, with no evidence."""
    if not actor.is_admin:
        raise Forbidden(f"only an admin may force {label} (TUNEBOT_ADMINS)")
    if not reason:
        raise UserError(f"force needs a reason: /{kind} label {name}@{version} {label} "
                        'force reason="why"', cmd.spec.usage)
    return said(promote.move(
        engine=app.engine, team_id=actor.team_id, name=name, label=label, version=version,
        user=actor.user_id, expect=holder, forced=True,
        reason=f"forced by {actor.user_id}: {reason}", evidence=None, kind=kind))


def said(text: str) -> Outcome:
    """A one-line answer (the gate's verdict or a move)."""
    return Outcome(Reply(text=text, blocks=[section(text)]))


def queued_move(out: Outcome, what: str) -> Outcome:
    """The answer to a move queued behind its measurement (/prompt label, /model label)."""
    job = out.job
    assert job is not None
    text = (f"{what} — job #{job.id}; the label moves when it finishes, if the team's rule "
            "allows (an admin may override with force reason=\"…\").")
    return Outcome(Reply(text=text, blocks=[section(text)], ephemeral=True), job, out.created)


def _plain_label(app: Core, actor: Actor, ref: Ref, lab: str) -> Outcome:
    try:
        with session_scope(app.engine) as session:
            move = catalog.set_label(session=session, team_id=actor.team_id, ref=ref,
                                     label=lab, user=actor.user_id)
    except IntegrityError:
        raise UserError("someone moved that label at the same moment; try again") from None
    if not move.moved:
        return said(f"{move.name}:{move.label} already points at v{move.to_version}.")
    was = f" (was v{move.from_version})" if move.from_version else " (new label)"
    return said(f"{move.name}:{move.label} → v{move.to_version}{was}.")
